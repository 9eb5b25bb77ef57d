"""Writes a SentencePiece tokenizer.model holding the vocabulary of a SentencePiece-style BPE
tokenizer.json (the real Llama 2-style one the tests fetch), the inverse of transformers' conversion
(LlamaConverter): the pieces in id order, <unk> UNKNOWN, the special added tokens CONTROL, <0xNN>
BYTE, every other piece NORMAL with a score that orders the merges as the tokenizer.json's merge
list does (SentencePiece merges the pair whose result scores highest); BPE with byte fallback; the
identity normalizer with the dummy prefix and whitespace escaped, as Llama's model has it. Built with
the model's own protobuf schema (Debian's python3-sentencepiece), read back by Google's library.

argv: TOKENIZER_JSON OUT_MODEL"""
import json
import sys

from sentencepiece import sentencepiece_model_pb2 as pb

tj = json.load(open(sys.argv[1], encoding="utf-8"))
m = tj["model"]
assert m["type"] == "BPE" and m.get("byte_fallback"), "a BPE model with byte fallback"
by_id = {i: t for t, i in m["vocab"].items()}
added = {a["id"]: a for a in tj["added_tokens"]}
rank = {}
for r, merge in enumerate(m["merges"]):
    a, b = merge.split(" ", 1) if isinstance(merge, str) else merge
    rank.setdefault(a + b, r)

proto = pb.ModelProto()
Piece = pb.ModelProto.SentencePiece
for i in range(len(by_id)):
    t = by_id[i]
    p = proto.pieces.add()
    p.piece = t
    p.score = 0.0
    if t == m.get("unk_token"):
        p.type = Piece.UNKNOWN
    elif i in added and added[i]["special"]:
        p.type = Piece.CONTROL
    elif len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
        p.type = Piece.BYTE
    else:
        p.type = Piece.NORMAL
        p.score = -float(rank[t]) if t in rank else -1e9 - i
spec = proto.trainer_spec
spec.model_type = pb.TrainerSpec.BPE
spec.vocab_size = len(by_id)
spec.byte_fallback = True
spec.unk_id, spec.bos_id, spec.eos_id, spec.pad_id = 0, 1, 2, -1
norm = proto.normalizer_spec
norm.name = "identity"
norm.add_dummy_prefix = True
norm.remove_extra_whitespaces = False
norm.escape_whitespaces = True
open(sys.argv[2], "wb").write(proto.SerializeToString())
