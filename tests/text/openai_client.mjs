// The official `openai` npm client against modelcast's API, as applications call it. argv: the
// base URL (http://127.0.0.1:PORT/v1), the API key, the model, the folder npm installed into,
// and the file to write what it saw to (JSON).
import fs from 'fs';
import { createRequire } from 'module';

const [baseURL, apiKey, model, npmDir, outFile] = process.argv.slice(2);
const require = createRequire(npmDir + '/');
const OpenAI = require('openai');
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 60000 });
const out = {};
const messages = [
  { role: 'system', content: 'You are terse.' },
  { role: 'user', content: 'hello there, the quick brown fox' },
];

const models = await client.models.list();
out.models = models.data.map((m) => m.id);

const completion = await client.completions.create({ model, prompt: 'hello world', max_tokens: 8, temperature: 0 });
out.completion = { text: completion.choices[0].text, finish_reason: completion.choices[0].finish_reason,
                   usage: completion.usage };

const chat = await client.chat.completions.create({ model, messages, max_tokens: 10, temperature: 0 });
out.chat = { role: chat.choices[0].message.role, content: chat.choices[0].message.content,
             finish_reason: chat.choices[0].finish_reason, usage: chat.usage, object: chat.object };

const stream = await client.chat.completions.create({ model, messages, max_completion_tokens: 10, temperature: 0,
                                                      stream: true, stream_options: { include_usage: true } });
let streamed = '', role = null, finish = null, usage = null, chunks = 0;
for await (const chunk of stream) {
  ++chunks;
  if (chunk.usage) usage = chunk.usage;
  for (const c of chunk.choices) {
    if (c.delta.role) role = c.delta.role;
    if (c.delta.content) streamed += c.delta.content;
    if (c.finish_reason) finish = c.finish_reason;
  }
}
out.stream = { role, content: streamed, finish_reason: finish, usage, chunks };

// Bad requests: each an APIError with OpenAI's error shape.
out.errors = {};
const bad = {
  n2: { model, messages, n: 2 },
  unknown_role: { model, messages: [{ role: 'wizard', content: 'hi' }] },
  stop: { model, messages, stop: ['\n'] },
  no_model: { model: 'no-such-model', messages },
  empty: { model, messages: [] },
};
for (const [name, body] of Object.entries(bad)) {
  try {
    await client.chat.completions.create(body);
    out.errors[name] = { accepted: true };
  } catch (e) {
    out.errors[name] = { status: e.status, message: e.error ? e.error.message : String(e) };
  }
}
fs.writeFileSync(outFile, JSON.stringify(out));
