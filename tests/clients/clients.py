"""Real HTTP clients against a running chat server (run by tests/serve_clients.rs).

    clients.py URL MODEL_ID BUSY_URL

URL serves a tiny CPU model; BUSY_URL a slow model with one worker and --max-queue 4. Every request has a
timeout, so a body that never ends fails here instead of hanging. Prints one line per check and exits non-zero
on the first failure.
"""

import json
import sys
import threading

import openai
import requests

URL, MODEL_ID, BUSY_URL = sys.argv[1], sys.argv[2], sys.argv[3]
TIMEOUT = (5, 30)  # connect, read (seconds)


def check(name, cond, detail=""):
    if not cond:
        print(f"FAIL {name}: {detail}", flush=True)
        sys.exit(1)
    print(f"ok   {name}", flush=True)


def body(messages="hello", **extra):
    return {"messages": [{"role": "user", "content": messages}], "max_tokens": 12, **extra}


def data_events(text):
    return [e[len("data: "):] for e in text.split("\n\n") if e]


# --- requests: bodies read to their end (resp.content waits for the end of the body) ---------------------
r = requests.post(URL + "/chat/completions", json=body(), timeout=TIMEOUT)
ev = data_events(r.content.decode())
check("requests: upstream stream ends with done", r.status_code == 200 and ev[-1] == '{"done":true}', ev[-3:])
tokens = [json.loads(e)["token"] for e in ev[:-1]]
check("requests: token events", len(tokens) >= 1 and all(t for t in tokens), tokens)

r = requests.post(URL + "/v1/chat/completions", json=body(stream=True, temperature=0.0), timeout=TIMEOUT)
ev = data_events(r.content.decode())
check("requests: OpenAI stream ends with [DONE]", r.status_code == 200 and ev[-1] == "[DONE]", ev[-3:])
streamed = "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in ev[:-1])

# The same session twice: the stream must end for a kept-alive connection to serve the next request.
with requests.Session() as s:
    for i in range(3):
        r = s.post(URL + "/chat/completions", json=body(), timeout=TIMEOUT)
        check(f"requests: session request {i} on one connection", r.content.endswith(b'data: {"done":true}\n\n'))

r = requests.post(URL + "/v1/chat/completions", json=body(temperature=0.0), timeout=TIMEOUT)
msg = r.json()["choices"][0]["message"]["content"]
check("requests: non-streaming answer equals the stream at temperature 0", msg == streamed, (msg, streamed))

# --- requests: 16 concurrent clients against one slow worker and a queue of 4 -----------------------------
results = [None] * 16


def client(i):
    try:
        r = requests.post(BUSY_URL + "/chat/completions", json=body(f"client {i}"), timeout=TIMEOUT)
        results[i] = (r.status_code, r.content)
    except Exception as e:  # a read timeout here is the failure this test exists for
        results[i] = ("exception", repr(e))


threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
for t in threads:
    t.start()
for t in threads:
    t.join()
codes = [r[0] for r in results]
check("requests: 16 concurrent clients all get 200 or 503", all(c in (200, 503) for c in codes), results)
ok = [r for r in results if r[0] == 200]
check("requests: the 200s are complete streams", all(r[1].endswith(b'data: {"done":true}\n\n') for r in ok))
check("requests: at least the running and one queued request succeed", len(ok) >= 2, codes)
busy = [json.loads(r[1]) for r in results if r[0] == 503]
check("requests: 503s say busy", all("busy" in b["error"] for b in busy), busy)

# --- the official openai client ----------------------------------------------------------------------------
client = openai.OpenAI(base_url=URL + "/v1", api_key="unused", max_retries=0, timeout=30.0)
models = client.models.list()
ids = [m.id for m in models.data]
check("openai: models.list names the served model", ids == [MODEL_ID], ids)
m = client.models.retrieve(MODEL_ID)
check("openai: models.retrieve", m.id == MODEL_ID and m.object == "model", m)

c = client.chat.completions.create(
    model=MODEL_ID, messages=[{"role": "user", "content": "hello"}], max_tokens=12, temperature=0.0
)
text = c.choices[0].message.content
check("openai: non-streaming completion", c.object == "chat.completion" and text == msg, (text, msg))
check(
    "openai: usage adds up",
    c.usage.completion_tokens <= 12 and c.usage.total_tokens == c.usage.prompt_tokens + c.usage.completion_tokens,
    c.usage,
)

chunks = list(
    client.chat.completions.create(
        model=MODEL_ID,
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=12,
        temperature=0.0,
        stream=True,
        stream_options={"include_usage": True},
    )
)
text_s = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
check("openai: streamed text equals the non-streaming text", text_s == text, (text_s, text))
check("openai: the last chunk carries usage and no choices", chunks[-1].choices == [] and chunks[-1].usage is not None)
check("openai: streamed usage equals the non-streaming usage", chunks[-1].usage == c.usage, (chunks[-1].usage, c.usage))
check("openai: other chunks have no usage", all(ch.usage is None for ch in chunks[:-1]))

try:
    client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "hi"}], temperature=3.0)
    check("openai: temperature 3 is refused", False, "no exception")
except openai.BadRequestError as e:
    check("openai: BadRequestError status 400", e.status_code == 400, e.status_code)
    check("openai: the exception carries the server's message", "temperature must be between" in e.message, e.message)
    check("openai: param and type parsed", e.param == "temperature" and e.type == "invalid_request_error", e.body)
try:
    client.models.retrieve("no-such-model")
    check("openai: unknown model is refused", False, "no exception")
except openai.NotFoundError as e:
    check("openai: NotFoundError with code model_not_found", e.code == "model_not_found", e.body)
print("all client checks passed", flush=True)
