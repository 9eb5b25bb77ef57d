#!/usr/bin/python3
"""Sends completion requests to modelcast's HTTP endpoint in a loop, one at a time, and writes
one JSON line per answer (prompt index, tokens, served_by, start and end unix times, HTTP status
or error) to OUT, until the file STOP exists or LIMIT seconds have passed.

  completion_client.py URL TOKEN MODEL PROMPTS.json MAX_TOKENS OUT STOP LIMIT FIRST
"""
import json
import os
import sys
import time
import urllib.error
import urllib.request


def main():
    url, token, model, prompts_file, max_tokens, out, stop, limit, first = sys.argv[1:10]
    prompts = json.load(open(prompts_file))
    deadline = time.time() + float(limit)
    n = int(first)
    with open(out, "w") as f:
        while not os.path.exists(stop) and time.time() < deadline:
            i = n % len(prompts)
            n += 1
            p = prompts[i]
            body = {"model": model, "prompt": p["tokens"], "max_tokens": int(max_tokens),
                    "temperature": p["temperature"], "seed": p["seed"]}
            req = urllib.request.Request(url + "/v1/completions", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json",
                                                  "Authorization": "Bearer " + token})
            rec = {"prompt": i, "start": time.time()}
            try:
                with urllib.request.urlopen(req, timeout=120) as r:
                    j = json.load(r)
                rec.update(status=200, tokens=j["choices"][0]["tokens"],
                           served_by=j["modelcast"]["served_by"], ttft_s=j["modelcast"]["ttft_s"])
            except urllib.error.HTTPError as e:
                rec.update(status=e.code, error=e.read().decode(errors="replace"))
            except Exception as e:  # connection refused while the coordinator starts, timeouts
                rec.update(status=0, error=str(e))
                time.sleep(0.05)
            rec["end"] = time.time()
            f.write(json.dumps(rec) + "\n")
            f.flush()


if __name__ == "__main__":
    main()
