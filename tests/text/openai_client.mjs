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

// Stop strings: one from the middle of the answers above (code points, not UTF-16 units), with
// one that never occurs beside it; the same answers cut before it, streamed or not.
const middle = (text) => { const c = Array.from(text); const m = Math.floor(c.length / 2); return c.slice(m, m + 2).join(''); };
const stop = middle(out.chat.content);
out.stop = { stop };
const stopped = await client.chat.completions.create({ model, messages, max_tokens: 10, temperature: 0,
                                                       stop: [stop, '\u0001never'] });
out.stop.chat = { content: stopped.choices[0].message.content, finish_reason: stopped.choices[0].finish_reason,
                  usage: stopped.usage };
const stoppedStream = await client.chat.completions.create({ model, messages, max_tokens: 10, temperature: 0, stop,
                                                             stream: true, stream_options: { include_usage: true } });
out.stop.stream = { content: '', finish_reason: null, usage: null };
for await (const chunk of stoppedStream) {
  if (chunk.usage) out.stop.stream.usage = chunk.usage;
  for (const c of chunk.choices) {
    if (c.delta.content) out.stop.stream.content += c.delta.content;
    if (c.finish_reason) out.stop.stream.finish_reason = c.finish_reason;
  }
}
out.stop.completion_stop = middle(out.completion.text);
const completionStream = await client.completions.create({ model, prompt: 'hello world', max_tokens: 8, temperature: 0,
                                                          stop: out.stop.completion_stop, stream: true });
out.stop.completion = { text: '', finish_reason: null };
for await (const chunk of completionStream) {
  for (const c of chunk.choices) {
    out.stop.completion.text += c.text;
    if (c.finish_reason) out.stop.completion.finish_reason = c.finish_reason;
  }
}

// Bad requests: each an APIError with OpenAI's error shape.
out.errors = {};
const bad = {
  n2: { model, messages, n: 2 },
  unknown_role: { model, messages: [{ role: 'wizard', content: 'hi' }] },
  empty_stop: { model, messages, stop: ['\n', ''] },
  stop_type: { model, messages, stop: 3 },
  no_model: { model: 'no-such-model', messages },
  empty: { model, messages: [] },
  raises: { model, messages: [{ role: 'assistant', content: 'I speak first.' }] },
  too_long: { model, messages: [{ role: 'user', content: 'hello '.repeat(2000) }] },
  surrogate: { model, messages: [{ role: 'user', content: 'a lone \ud800 surrogate' }] },
};
for (const [name, body] of Object.entries(bad)) {
  try {
    await client.chat.completions.create(body);
    out.errors[name] = { accepted: true };
  } catch (e) {
    out.errors[name] = { status: e.status, message: e.error ? e.error.message : String(e) };
  }
}
try {
  await client.completions.create({ model, prompt: 'hello '.repeat(2000), max_tokens: 4 });
  out.errors.completion_too_long = { accepted: true };
} catch (e) {
  out.errors.completion_too_long = { status: e.status, message: e.error ? e.error.message : String(e) };
}
fs.writeFileSync(outFile, JSON.stringify(out));
