// Runs @huggingface/inference, unchanged, against the service: reads a JSON list of calls on stdin,
// prints one JSON answer per call: {"ok": output} or {"error": {name, message, status}}.
// tests/protocol/test_clients.py writes the calls and compares the answers with /analyze's.
import { InferenceClient } from "@huggingface/inference";

const calls = JSON.parse(await new Promise((resolve) => {
  let data = "";
  process.stdin.on("data", (chunk) => (data += chunk));
  process.stdin.on("end", () => resolve(data));
}));

const answers = [];
for (const { method, endpointUrl, accessToken, inputs, parameters } of calls) {
  const client = new InferenceClient(accessToken ?? undefined);
  try {
    // retry_on_error: false, else the client retries a 503 forever.
    const args = parameters ? { endpointUrl, inputs, parameters } : { endpointUrl, inputs };
    const ok = await client[method](args, { retry_on_error: false });
    answers.push({ ok });
  } catch (error) {
    answers.push({ error: { name: error.name, message: error.message, status: error.httpResponse?.status ?? null } });
  }
}
process.stdout.write(JSON.stringify(answers));
