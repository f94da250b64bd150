"""The Ollama Modelfile beside a GGUF: a Go TEMPLATE and `stop` parameters derived from the run's own chat
template. Jinja cannot be translated in general, so the template is rendered with marker strings and
cut at the markers into the text before and after each part (system, prompt, response)."""

from __future__ import annotations

SYSTEM, USER, ANSWER = "\x01SYSTEM\x01", "\x01USER\x01", "\x01ANSWER\x01"


def render(tokenizer, messages: list[dict], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def stop_tokens(tokenizer) -> list[str]:
    """EOS, then the special tokens that close an assistant turn (e.g. <|im_end|>, <|eot_id|>): generation
    must stop at any of them, or llama.cpp and Ollama run on into a new turn."""
    stops = [tokenizer.eos_token] if tokenizer.eos_token else []
    if tokenizer.chat_template:
        full = render(tokenizer, [{"role": "user", "content": USER}, {"role": "assistant", "content": ANSWER}], False)
        after = full.split(ANSWER, 1)[1] if ANSWER in full else ""
        specials = [token for token, added in ((t.content, t) for t in tokenizer.added_tokens_decoder.values())
                    if added.special]
        found = sorted((after.find(token), token) for token in specials if token in after)
        stops += [token for _, token in found if token not in stops]
    return stops


def modelfile(tokenizer, gguf_name: str) -> str:
    """A Modelfile; without a chat template it lets Ollama fall back to the template stored in the GGUF."""
    lines = [f"FROM ./{gguf_name}", ""]
    if tokenizer.chat_template:
        lines += [f'TEMPLATE """{go_template(tokenizer)}"""', ""]
    lines += [f'PARAMETER stop "{_quote(token)}"' for token in stop_tokens(tokenizer)]
    return "\n".join(lines) + "\n"


def go_template(tokenizer) -> str:
    """{{ if .System }}...{{ else }}...{{ end }}{{ .Prompt }}...{{ .Response }}... from three renderings: with
    a system message, without one, and with the answer, so default system prompts and BOS text survive."""
    with_system = render(tokenizer, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}], True)
    without = render(tokenizer, [{"role": "user", "content": USER}], True)
    answered = render(tokenizer, [{"role": "user", "content": USER}, {"role": "assistant", "content": ANSWER}], False)
    before_user = without.split(USER, 1)[0]
    after_user = without.split(USER, 1)[1]
    after_answer = answered.split(ANSWER, 1)[1] if ANSWER in answered else ""
    bos = tokenizer.bos_token or ""
    # llama.cpp adds BOS itself when the GGUF says so; a literal BOS in the template would double it.
    if bos and tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id]:
        before_user = before_user.removeprefix(bos)
    template = before_user
    if SYSTEM in with_system:  # templates that drop system messages get no system branch
        system_before, rest = with_system.split(SYSTEM, 1)
        system_between = rest.split(USER, 1)[0]
        if bos and before_user != without.split(USER, 1)[0]:
            system_before = system_before.removeprefix(bos)
        template = (f"{{{{ if .System }}}}{_escape(system_before)}{{{{ .System }}}}{_escape(system_between)}"
                    f"{{{{ else }}}}{_escape(before_user)}{{{{ end }}}}")
    else:
        template = _escape(template)
    return f"{template}{{{{ .Prompt }}}}{_escape(after_user)}{{{{ .Response }}}}{_escape(after_answer)}"


def _escape(text: str) -> str:
    """Literal text inside a Go template and a triple-quoted Modelfile string."""
    return text.replace("{{", '{{ "{{" }}').replace('"""', '\\"\\"\\"')


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')
