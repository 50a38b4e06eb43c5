"""The official `openai` Python client against a running `gavel serve`.

Run by the Rust test `serve::official_openai_client` (crates/gavel-cli/tests/it/serve.rs), which
starts the gateway and sets GAVEL_BASE_URL, GAVEL_SERVICE_KEY and GAVEL_KB_PROMPT. The contract
there allows the principal 7 requests a minute, so the last case runs into the budget.
Exits non-zero (with the failing case named) if any expectation fails.
"""

import json
import os
import sys

import openai

client = openai.OpenAI(
    base_url=os.environ["GAVEL_BASE_URL"],
    api_key=os.environ["GAVEL_SERVICE_KEY"],
    max_retries=0,
)
system = {"role": "system", "content": os.environ["GAVEL_KB_PROMPT"]}


def chat(user, **kwargs):
    return client.chat.completions.create(
        model="kb-search-v1",
        messages=[system, {"role": "user", "content": user}],
        **kwargs,
    )


def check(name, condition, detail=""):
    if not condition:
        print(f"FAILED: {name}: {detail}")
        sys.exit(1)
    print(f"ok: {name}")


# 1. A plain completion.
reply = chat("Where is the VPN guide?")
check("non-streamed completion", "VPN guide" in reply.choices[0].message.content, reply)

# 2. The same, streamed.
text = "".join(
    chunk.choices[0].delta.content or ""
    for chunk in chat("Where is the VPN guide?", stream=True)
    if chunk.choices
)
check("streamed completion", "VPN guide" in text, text)

# 3. ALLOW with redaction: the upstream (a mock that echoes the question) never saw the address.
reply = chat("Please mail the guide to jane.doe@example.org")
content = reply.choices[0].message.content
check("redaction", "[EMAIL_1]" in content and "jane.doe" not in content, content)

# 4. BLOCK: the client's permission error, with gavel's reason code readable.
try:
    client.chat.completions.create(
        model="support-triage-v3", messages=[{"role": "user", "content": "hi"}]
    )
    check("block", False, "no exception")
except openai.PermissionDeniedError as e:
    check("block is PermissionDeniedError", e.status_code == 403, e)
    check("block carries the reason code", e.code == "approval.missing", e.body)
    check("block carries the decision id", str(e.body.get("decision_id", "")).startswith("dec_"), e.body)

# 5. A stream cut mid-way by an output violation: an APIError while iterating; nothing of the
#    violating span was delivered.
received = []
try:
    for chunk in chat("Who owns the guide? [mock:pii]", stream=True):
        if chunk.choices:
            received.append(chunk.choices[0].delta.content or "")
    check("stream cut", False, "the stream ended normally: " + "".join(received))
except openai.APIError as e:
    check("stream cut carries the reason code", "privacy.pii" in str(e.body) or "privacy.pii" in str(e), e)
    check("nothing of the address was delivered", "jane" not in "".join(received), received)

def stream_tool_calls(user, calls):
    """Streams a chat, accumulating its tool calls into `calls` (by index) as the client hands
    them out, so a caller still has what arrived when the stream raises; returns the finish
    reason."""
    finish = None
    for chunk in chat(user, stream=True):
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                entry = calls.setdefault(call.index, {"name": "", "arguments": ""})
                if call.function is not None:
                    entry["name"] += call.function.name or ""
                    entry["arguments"] += call.function.arguments or ""
            finish = choice.finish_reason or finish
    return finish


# 6. A streamed tool call, its arguments a few characters an event (the mock streams them as
#    models do): they pass their own hold-back window and arrive whole.
calls = {}
finish = stream_tool_calls("Find the VPN guide [mock:tool]", calls)
arguments = json.loads(calls[0]["arguments"])
check(
    "streamed tool call",
    calls[0]["name"] == "search" and arguments == {"query": "Find the VPN guide"} and finish == "tool_calls",
    calls,
)

# 7. A secret in streamed tool-call arguments cuts the stream before any of it is delivered.
calls = {}
try:
    stream_tool_calls("Find the deploy key [mock:tool] [mock:secret]", calls)
    check("tool call cut", False, "the stream ended normally")
except openai.APIError as e:
    check("tool call cut carries the reason code", "privacy.secret" in str(e.body) or "privacy.secret" in str(e), e)
    received = "".join(c["arguments"] for c in calls.values())
    check("nothing of the token was delivered", "ghp" not in received, received)

# 8. COOLDOWN: the budget of 7 requests a minute runs out: the client's rate-limit error, with
#    the retry delay.
for attempt in range(10):
    try:
        chat("One more question")
    except openai.RateLimitError as e:
        check("cooldown is RateLimitError", e.status_code == 429, e)
        check("cooldown carries the reason code", e.code == "budget.rate", e.body)
        retry = int(e.response.headers.get("retry-after", "0"))
        check("cooldown carries Retry-After", 0 < retry <= 60, e.response.headers)
        break
else:
    check("cooldown", False, "no RateLimitError after 10 requests")

print("all openai client cases passed")
