"""The independent reference for modelcast's chat templates: Debian's python3-jinja2, configured
as transformers configures it (transformers/utils/chat_template_utils.py: an immutable sandboxed
environment with trim_blocks and lstrip_blocks, the loop controls extension, and its own
raise_exception, tojson and strftime_now).

Reads {"templates": {name: text}, "cases": [{"template": name, "context": {...}}]} from argv[1];
writes a list, per case, of {"text": ...} or {"error": message} to argv[2]."""
import json
import sys
from datetime import datetime

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def strftime_now(format):
    return datetime.now().strftime(format)


env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
env.filters["tojson"] = tojson
env.globals["raise_exception"] = raise_exception
env.globals["strftime_now"] = strftime_now

data = json.load(open(sys.argv[1], encoding="utf-8"))
compiled = {name: env.from_string(text) for name, text in data["templates"].items()}
out = []
for case in data["cases"]:
    try:
        out.append({"text": compiled[case["template"]].render(**case["context"])})
    except jinja2.exceptions.TemplateError as e:
        out.append({"error": str(e)})
json.dump(out, open(sys.argv[2], "w", encoding="utf-8"), ensure_ascii=False)
