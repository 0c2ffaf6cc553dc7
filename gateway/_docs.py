"""``/docs``: an interactive page for the OpenAPI document that needs no network but ours.

One self-contained page, no CDN and nothing vendored: it fetches ``openapi.json``
from the gateway, lists every operation with its parameters and schemas, fills
in an example body from the request schema, and sends the request with
``fetch``. Text from the document (service descriptions come from services) is
only ever set as ``textContent``, never parsed as HTML. The Content-Security-Policy
allows exactly this page's script and style, by hash, and requests to the gateway.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Final

_STYLE: Final = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1b1f24;background:#f6f8fa}
header{background:#24292f;color:#fff;padding:12px 20px}
header h1{font-size:18px;margin:0}
header p{margin:4px 0 0;color:#c9d1d9}
main{max-width:1000px;margin:0 auto;padding:12px 20px}
h2{font-size:16px;margin:20px 0 6px;border-bottom:1px solid #d0d7de}
details{background:#fff;border:1px solid #d0d7de;border-radius:6px;margin:6px 0}
summary{cursor:pointer;padding:8px 10px;font-family:ui-monospace,monospace}
.m{display:inline-block;min-width:60px;font-weight:bold;color:#fff;border-radius:4px;
  text-align:center;margin-right:8px;padding:1px 4px}
.GET{background:#1f6feb}.POST{background:#2da44e}.PUT{background:#bf8700}
.PATCH{background:#8250df}.DELETE{background:#cf222e}
.op{padding:4px 12px 12px}
label{display:block;margin:6px 0 2px;font-family:ui-monospace,monospace}
input,textarea{width:100%;box-sizing:border-box;font-family:ui-monospace,monospace}
textarea{min-height:90px}
pre{background:#f6f8fa;border:1px solid #d0d7de;padding:8px;overflow:auto;max-height:320px}
button{margin-top:8px;padding:4px 14px}
.status{font-weight:bold;margin-top:8px}
"""

_SCRIPT: Final = r"""
(function () {
  "use strict";
  var spec = null;
  function el(tag, text, cls) {
    var node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }
  function resolve(schema, depth) {
    var seen = 0;
    while (schema && schema.$ref && seen < 20) {
      var name = schema.$ref.replace("#/components/schemas/", "");
      schema = (spec.components.schemas || {})[name];
      seen += 1;
    }
    return schema || {};
  }
  function example(schema, depth) {
    schema = resolve(schema);
    if (depth > 6) return null;
    if (schema.examples && schema.examples.length) return schema.examples[0];
    if (schema.default !== undefined) return schema.default;
    if (schema.anyOf) {
      for (var i = 0; i < schema.anyOf.length; i++) {
        var option = resolve(schema.anyOf[i]);
        if (option.type !== "null") return example(option, depth + 1);
      }
      return null;
    }
    var type = Array.isArray(schema.type) ? schema.type[0] : schema.type;
    if (schema.properties || type === "object") {
      var out = {};
      var props = schema.properties || {};
      Object.keys(props).forEach(function (key) { out[key] = example(props[key], depth + 1); });
      return out;
    }
    if (type === "array") return [example(schema.items || {}, depth + 1)];
    if (type === "integer") return schema.minimum !== undefined ? schema.minimum : 1;
    if (type === "number") return schema.minimum !== undefined ? schema.minimum : 1.5;
    if (type === "boolean") return false;
    if (type === "string") return schema.enum ? schema.enum[0] : "text";
    return null;
  }
  function operation(path, method, op) {
    var box = el("details");
    var summary = el("summary");
    summary.appendChild(el("span", method.toUpperCase(), "m " + method.toUpperCase()));
    summary.appendChild(el("span", path));
    box.appendChild(summary);
    var body = el("div", null, "op");
    if (op.summary) body.appendChild(el("p", op.summary));
    if (op.description) body.appendChild(el("p", op.description));
    var inputs = {};
    (op.parameters || []).forEach(function (p) {
      body.appendChild(el("label", p.name + " (" + p.in + (p.required ? ", required" : "") + ")"));
      var input = el("input");
      var ex = example(p.schema || {}, 0);
      if (p.required && ex !== null) input.value = String(ex);
      inputs[p.name] = {param: p, input: input};
      body.appendChild(input);
    });
    var text = null;
    if (op.requestBody) {
      body.appendChild(el("label", "JSON body"));
      text = el("textarea");
      var schema = op.requestBody.content["application/json"].schema;
      text.value = JSON.stringify(example(schema, 0), null, 2);
      body.appendChild(text);
      var shown = el("details");
      shown.appendChild(el("summary", "request schema"));
      shown.appendChild(el("pre", JSON.stringify(resolve(schema), null, 2)));
      body.appendChild(shown);
    }
    var button = el("button", "Send");
    var status = el("div", null, "status");
    var result = el("pre");
    button.addEventListener("click", function () {
      var url = path;
      var query = [];
      Object.keys(inputs).forEach(function (name) {
        var item = inputs[name];
        var value = item.input.value;
        if (item.param.in === "path") {
          url = url.replace("{" + name + "}", encodeURIComponent(value));
        } else if (value !== "") {
          query.push(encodeURIComponent(name) + "=" + encodeURIComponent(value));
        }
      });
      if (query.length) url += "?" + query.join("&");
      var init = {method: method.toUpperCase(), headers: {}};
      if (text) {
        init.body = text.value;
        init.headers["content-type"] = "application/json";
      }
      status.textContent = "…";
      result.textContent = "";
      var started = performance.now();
      fetch(url.replace(/^\//, ""), init).then(function (response) {
        var ms = (performance.now() - started).toFixed(1);
        status.textContent = response.status + " " + response.statusText + " (" + ms + " ms)";
        return response.text();
      }).then(function (raw) {
        try { result.textContent = JSON.stringify(JSON.parse(raw), null, 2); }
        catch (e) { result.textContent = raw; }
      }).catch(function (err) { status.textContent = "failed: " + err; });
    });
    body.appendChild(button);
    body.appendChild(status);
    body.appendChild(result);
    box.appendChild(body);
    return box;
  }
  function render() {
    var main = document.getElementById("ops");
    main.textContent = "";
    document.getElementById("title").textContent = spec.info.title + " " + spec.info.version;
    document.getElementById("about").textContent = spec.info.description || "";
    var groups = {};
    Object.keys(spec.paths).sort().forEach(function (path) {
      var item = spec.paths[path];
      Object.keys(item).forEach(function (method) {
        var op = item[method];
        var tag = (op.tags && op.tags[0]) || "other";
        (groups[tag] = groups[tag] || []).push([path, method, op]);
      });
    });
    var notes = {};
    (spec.tags || []).forEach(function (t) { notes[t.name] = t.description; });
    Object.keys(groups).sort().forEach(function (tag) {
      main.appendChild(el("h2", tag));
      if (notes[tag]) main.appendChild(el("p", notes[tag]));
      groups[tag].forEach(function (g) { main.appendChild(operation(g[0], g[1], g[2])); });
    });
  }
  fetch("openapi.json").then(function (r) { return r.json(); }).then(function (doc) {
    spec = doc;
    render();
  }).catch(function (err) {
    document.getElementById("ops").textContent = "could not load openapi.json: " + err;
  });
})();
"""


def _hash(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


PAGE: Final = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>natsmesh gateway</title>
<link rel="icon" href="data:,">
<style>{_STYLE}</style>
</head>
<body>
<header><h1 id="title">natsmesh gateway</h1><p id="about"></p></header>
<main id="ops">loading openapi.json…</main>
<script>{_SCRIPT}</script>
</body>
</html>
""".encode()

#: Only this page's own script and style run; it may talk to the gateway and nothing else.
CSP: Final = (
    f"default-src 'none'; script-src 'sha256-{_hash(_SCRIPT)}'; "
    f"style-src 'sha256-{_hash(_STYLE)}'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
).encode()
