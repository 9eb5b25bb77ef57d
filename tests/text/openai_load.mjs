// A steady request load through the official `openai` npm client, retrying as applications run
// it (maxRetries: 8, its own backoff; connection errors, 5xx answers and Retry-After are retried
// by the client, not here). argv: the folder npm installed into, the API key, the model, the file
// to write the counts to (JSON), the file whose existence ends the load, then one base URL per
// coordinator (http://127.0.0.1:PORT/v1); two workers per base URL, each a completion at a time.
import fs from 'fs';
import { createRequire } from 'module';

const [npmDir, apiKey, model, outFile, stopFile, ...baseURLs] = process.argv.slice(2);
const require = createRequire(npmDir + '/');
const OpenAI = require('openai');
const counts = { ok: 0, failed: 0, errors: [], by_url: {} };

async function worker(baseURL) {
  const client = new OpenAI({ baseURL, apiKey, maxRetries: 8, timeout: 30000 });
  counts.by_url[baseURL] ??= { ok: 0, failed: 0 };
  while (!fs.existsSync(stopFile)) {
    try {
      const r = await client.completions.create({ model, prompt: [1, 2, 3], max_tokens: 2, temperature: 0 });
      if (!r.choices || r.choices.length !== 1) throw new Error('an answer without one choice: ' + JSON.stringify(r));
      counts.ok++;
      counts.by_url[baseURL].ok++;
    } catch (e) {
      counts.failed++;
      counts.by_url[baseURL].failed++;
      if (counts.errors.length < 20) counts.errors.push(baseURL + ': ' + (e.status ?? '') + ' ' + e.message);
    }
  }
}

await Promise.all(baseURLs.flatMap((u) => [worker(u), worker(u)]));
fs.writeFileSync(outFile, JSON.stringify(counts));
