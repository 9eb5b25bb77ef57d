// The independent references for modelcast's tokenizer, on the same tokenizer.json files:
// Hugging Face's `tokenizers` (the Rust library transformers runs, through its Node binding) and
// transformers.js (@huggingface/transformers, a JavaScript reimplementation). Reads
// {"tokenizers": {name: dir}, "texts": [...], "decode": {name: [[ids...], ...]}} from argv[2];
// writes, per tokenizer and per reference, the ids of every text (no special tokens added,
// special tokens in the text recognised), the text of every id list (with and without the special
// tokens) and the seconds encoding took, to argv[3]. argv[4]: the folder npm installed into.
import fs from 'fs';
import { createRequire } from 'module';

const require = createRequire(process.argv[4] + '/');
const { Tokenizer } = require('tokenizers');
const { PreTrainedTokenizer } = require('@huggingface/transformers');

const input = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const seconds = (start) => Number(process.hrtime.bigint() - start) / 1e9;
const out = {};
for (const [name, dir] of Object.entries(input.tokenizers)) {
  const decode = input.decode[name] || [];
  // tokenizers (Rust)
  const hf = Tokenizer.fromFile(dir + '/tokenizer.json');
  let start = process.hrtime.bigint();
  const hfIds = [];
  for (const t of input.texts) hfIds.push(Array.from((await hf.encode(t, null, { addSpecialTokens: false })).getIds()));
  const hfSeconds = seconds(start);
  const hfDecoded = [];
  for (const d of decode) hfDecoded.push([await hf.decode(d, false), await hf.decode(d, true)]);
  // transformers.js
  const js = new PreTrainedTokenizer(JSON.parse(fs.readFileSync(dir + '/tokenizer.json', 'utf8')),
                                     JSON.parse(fs.readFileSync(dir + '/tokenizer_config.json', 'utf8')));
  start = process.hrtime.bigint();
  const jsIds = input.texts.map((t) => Array.from(js.encode(t, { add_special_tokens: false })));
  const jsSeconds = seconds(start);
  const jsDecoded = decode.map((d) => [
    js.decode(d, { skip_special_tokens: false, clean_up_tokenization_spaces: false }),
    js.decode(d, { skip_special_tokens: true, clean_up_tokenization_spaces: false }),
  ]);
  out[name] = {
    tokenizers: { ids: hfIds, decoded: hfDecoded, encode_seconds: hfSeconds },
    transformers_js: { ids: jsIds, decoded: jsDecoded, encode_seconds: jsSeconds },
  };
}
fs.writeFileSync(process.argv[3], JSON.stringify(out));
