/* Run a process as if its CPU had no AVX-512, VNNI or AMX: onnxruntime's MLAS (and numpy) then
   dispatch their AVX2 kernels, which this project's AVX2-only machines run (issue 23).

   MLAS has no switch for it (platform.cpp reads CPUID and XCR0 directly). Linux's CPUID faulting
   (arch_prctl ARCH_SET_CPUID, CPU flag `cpuid_fault`) makes every CPUID instruction trap; the
   SIGSEGV handler executes the real one and clears the AVX-512 / VNNI / AMX bits of leaf 7.
   AVX2ONLY=noamx clears the AMX bits only (AVX-512 VNNI kernels, as on a Xeon without AMX).

     gcc -O2 -shared -fPIC -o /tmp/avx2only.so bench/avx2only.c
     AVX2ONLY=1 LD_PRELOAD=/tmp/avx2only.so .venv/bin/python -m bench.recipes ...

   bench.recipes prints which int8 GEMM onnxruntime dispatched ("saturating (AVX2 ...)"). Timings
   are of this CPU's cores running AVX2 code, not of another machine; a process that installs its
   own SIGSEGV handler (pytest's faulthandler) breaks the emulation. */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <cpuid.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

static int amx_only;
static void set_cpuid(int on) { syscall(SYS_arch_prctl, ARCH_SET_CPUID, on); }

static void handler(int sig, siginfo_t *info, void *context) {
    ucontext_t *uc = context;
    greg_t *g = uc->uc_mcontext.gregs;
    unsigned char *ip = (unsigned char *)g[REG_RIP];
    if (ip[0] != 0x0f || ip[1] != 0xa2) { signal(SIGSEGV, SIG_DFL); return; }
    unsigned leaf = (unsigned)g[REG_RAX], sub = (unsigned)g[REG_RCX], a, b, c, d;
    set_cpuid(1);
    __cpuid_count(leaf, sub, a, b, c, d);
    set_cpuid(0);
    if (leaf == 7 && sub == 0 && amx_only) {
        d &= ~((1u << 22) | (1u << 24) | (1u << 25));
    } else if (leaf == 7 && sub == 0) {
        b &= ~((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | (1u << 28) | (1u << 30) | (1u << 31));
        c &= ~((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14));
        d &= ~((1u << 2) | (1u << 3) | (1u << 8) | (1u << 22) | (1u << 23) | (1u << 24) | (1u << 25));
    }
    if (leaf == 7 && sub == 1 && !amx_only) { a &= ~((1u << 4) | (1u << 5) | (1u << 21)); d &= ~((1u << 4) | (1u << 5)); }
    g[REG_RAX] = a; g[REG_RBX] = b; g[REG_RCX] = c; g[REG_RDX] = d;
    g[REG_RIP] += 2;
}

__attribute__((constructor)) static void init(void) {
    const char *mode = getenv("AVX2ONLY");
    if (!mode) return;
    amx_only = mode[0] == 'n' && mode[1] == 'o' && mode[2] == 'a';  /* AVX2ONLY=noamx: only AMX hidden */
    struct sigaction sa = {0};
    sa.sa_sigaction = handler;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGSEGV, &sa, 0);
    set_cpuid(0);
}
