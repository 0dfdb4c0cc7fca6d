"""Teachers for :mod:`trainkit.longctx.teacher`: an OpenAI-compatible endpoint or a local model.

A teacher is a callable ``teacher(messages) -> str | None``: the assistant's reply text,
or ``None`` when a reply arrived but carried no text (counted as unparsable). Transport
failures raise :class:`TeacherError` with ``kind`` ``"connection"`` (refused, reset,
HTTP 429/5xx) or ``"timeout"``. Retries and backoff live in the pipeline, which keeps one
attempt budget per prompt, so every request is counted exactly once.

HTTP (standard library only): ``POST {url}/chat/completions`` with ``model``, ``messages``,
``temperature``, ``max_tokens``; a URL that already ends in ``/chat/completions`` is used
as given. The key is read from the environment variable named by ``key_env`` and sent as
``Authorization: Bearer <key>``; when that variable is unset no header is sent (local
vLLM / llama.cpp servers need none). Other HTTP errors (400, 401, 403, 404, ...) mean the
URL, model or key is wrong for every request, so they stop the run with a
:class:`~trainkit.common.errors.UserError`.
"""

from __future__ import annotations

import http.client
import json
import os
import urllib.error
import urllib.request
from typing import Any

from trainkit.common.errors import UserError

#: HTTP statuses worth another try: the server is busy or failing, not the request wrong
RETRY_STATUS = (429, 500, 502, 503, 504)


class TeacherError(Exception):
    """A request that got no reply: ``kind`` is ``"connection"`` or ``"timeout"``."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def chat_url(url: str) -> str:
    """``http://h:8000/v1`` -> ``http://h:8000/v1/chat/completions``; a full URL unchanged."""
    u = url.rstrip("/")
    return u if u.endswith("/chat/completions") else u + "/chat/completions"


class HttpTeacher:
    """An OpenAI-compatible chat-completions endpoint.

    Args:
        url: base URL (``.../v1``) or the full ``.../chat/completions`` URL.
        model: the ``model`` field of every request.
        key_env: name of the environment variable that holds the API key.
        timeout: seconds allowed for the connection and for each socket read.
        temperature: sampling temperature sent with every request.
        max_tokens: reply length limit sent with every request.
    """

    def __init__(
        self,
        url: str,
        model: str,
        key_env: str = "OPENAI_API_KEY",
        timeout: float = 60.0,
        temperature: float = 0.0,
        max_tokens: int = 1024,
    ):
        if not url.startswith(("http://", "https://")):
            raise UserError(f"--teacher-url must start with http:// or https://, got {url!r}")
        self.url, self.model, self.timeout = chat_url(url), model, float(timeout)
        self.temperature, self.max_tokens = float(temperature), int(max_tokens)
        self.key = os.environ.get(key_env) or None
        self.name = f"{model}@{self.url}"

    def __call__(self, messages: list[dict]) -> str | None:
        body = json.dumps(
            {
                "model": self.model,
                "messages": messages,
                "temperature": self.temperature,
                "max_tokens": self.max_tokens,
            }
        ).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            detail = e.read()[:200].decode("utf-8", "replace").strip()
            if e.code in RETRY_STATUS:
                raise TeacherError("connection", f"HTTP {e.code}") from None
            if e.code == 408:
                raise TeacherError("timeout", "HTTP 408") from None
            raise UserError(
                f"teacher {self.url} answered HTTP {e.code} ({detail or e.reason}); check "
                "--teacher-url, --teacher-model and the key variable --teacher-key-env"
            ) from None
        except TimeoutError as e:
            raise TeacherError("timeout", f"no reply within {self.timeout:g} s") from e
        except urllib.error.URLError as e:
            if isinstance(e.reason, TimeoutError):
                raise TeacherError("timeout", f"no reply within {self.timeout:g} s") from None
            raise TeacherError("connection", str(e.reason)) from None
        except (OSError, http.client.HTTPException) as e:
            raise TeacherError("connection", f"{type(e).__name__}: {e}") from None
        return reply_text(raw)


def reply_text(raw: bytes) -> str | None:
    """``choices[0].message.content`` of a chat-completions body, or ``None``."""
    try:
        content = json.loads(raw.decode("utf-8"))["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return content if isinstance(content, str) else None


class LocalTeacher:
    """A local chat model (a folder, a ``.gguf`` file or a built-in such as
    ``smollm2-135m-instruct``) loaded by :func:`trainkit.llm.models.load_model`.

    Greedy decoding when ``temperature`` is 0, else sampling (seeded per call, so a run
    is reproducible). ``prefill`` is text the assistant's reply is forced to start with
    (e.g. ``[{"question": "`` steers a small model into JSON); the reply returned includes
    it. Never raises :class:`TeacherError`.
    """

    def __init__(
        self,
        name_or_path: str,
        temperature: float = 0.0,
        max_tokens: int = 1024,
        seed: int = 0,
        prefill: str = "",
    ):
        from trainkit.llm.models import load_model

        self.model, self.tok = load_model(name_or_path)
        self.model.eval()
        self.temperature, self.max_tokens = float(temperature), int(max_tokens)
        self.seed, self.calls, self.prefill = seed, 0, prefill
        self.name = f"local:{name_or_path}"

    def __call__(self, messages: list[dict]) -> str | None:
        import torch

        text = self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        enc = self.tok(text + self.prefill, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([list(enc)], device=self.model.device)
        kw: dict[str, Any] = {"do_sample": self.temperature > 0}
        if self.temperature > 0:
            kw["temperature"] = self.temperature
            torch.manual_seed(self.seed * 100003 + self.calls)
        self.calls += 1
        with torch.inference_mode():
            gen = self.model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=self.max_tokens,
                pad_token_id=self.tok.pad_token_id,
                eos_token_id=self.tok.eos_token_id,
                **kw,
            )
        return self.prefill + self.tok.decode(gen[0, ids.shape[1] :], skip_special_tokens=True)
