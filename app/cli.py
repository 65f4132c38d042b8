"""The ``engram`` command. User errors are caught here once and shown without a traceback."""

from __future__ import annotations

import argparse
import contextlib
import json
import sqlite3
import sys
from pathlib import Path

from app import __version__
from engine.errors import EngramError
from engine.settings import check_ctx
from store import paths
from store.store import StoreError


def _common(parser: argparse.ArgumentParser, top: bool) -> None:
    """Options accepted before or after the sub-command (``engram --home X chat`` or
    ``engram chat --home X``)."""
    default = None if top else argparse.SUPPRESS
    parser.add_argument("--home", default=default, metavar="DIR",
                        help="where sessions and memory live "
                             "(default: $ENGRAM_HOME or the user data dir)")
    parser.add_argument("--profile", default="default" if top else argparse.SUPPRESS,
                        type=_checked(paths.check_profile_name), metavar="NAME",
                        help="whose memory to use (default: default)")
    parser.add_argument("--model", default=default, metavar="PATH|NAME",
                        help="a GGUF model file, or a name `engram models` lists (default: "
                             "the built-in Gemma 3 270M)")
    parser.add_argument("--ctx", type=_checked(_ctx),
                        default=default, metavar="N",
                        help="context window in tokens (default: from settings, 4096)")


def _checked(check):
    """An argparse type from a check that raises ValueError with a message for the user."""
    def convert(text: str):
        try:
            return check(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return convert


def _ctx(text: str) -> int:
    if not text.strip().lstrip("+-").isdigit():
        raise ValueError(f"{text!r} is not a whole number of tokens")
    return check_ctx(int(text))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="engram",
                                     description="A local chat whose model learns from you.")
    parser.add_argument("--version", action="version", version=f"engram {__version__}")
    _common(parser, top=True)
    sub = parser.add_subparsers(dest="command")

    chat = sub.add_parser("chat", help="chat (the TUI, or --plain for pipes)")
    _common(chat, top=False)
    chat.add_argument("--plain", action="store_true", help="line-based chat on stdin/stdout")
    chat.add_argument("--private", action="store_true", help="a session that is never learned from")
    chat.add_argument("--session", type=int, metavar="ID", help="continue this session")

    sessions = sub.add_parser("sessions", help="list sessions, newest first")
    _common(sessions, top=False)
    sessions.add_argument("--search", metavar="TEXT")
    sessions.add_argument("--json", action="store_true")

    models = sub.add_parser("models", help="the GGUF models on this machine (Ollama, LM Studio, "
                            "Hugging Face, llama.cpp, your model folders)")
    _common(models, top=False)
    models.add_argument("--json", action="store_true")

    doctor = sub.add_parser("doctor", help="what Engram runs on here: llama.cpp build and GPU "
                            "offload, torch device, memory, caches, the model, the store")
    _common(doctor, top=False)
    doctor.add_argument("--json", action="store_true")

    setup = sub.add_parser("setup", help="assemble the built-in model once (done by `make`)")
    _common(setup, top=False)

    bench = sub.add_parser("bench", help="benchmarks (ratios against a same-run baseline)")
    bench_sub = bench.add_subparsers(dest="bench", required=True)
    generate = bench_sub.add_parser("generate", help="tokens/s vs bare llama-cpp-python")
    _common(generate, top=False)
    generate.add_argument("--json", action="store_true")
    generate.add_argument("--tokens", type=int, default=128)
    generate.add_argument("--repetitions", type=int, default=5)
    cells = bench_sub.add_parser("cells", help="what cells recover once turns leave the window, "
                                 "their side effects, and resuming a saved session")
    _common(cells, top=False)
    cells.add_argument("--facts", metavar="FILE",
                       help="sessions with probes (default: the bundled user-facts.jsonl)")
    cells.add_argument("--topics", metavar="FILE",
                       help="topic conversations (default: the bundled topic-conversations.jsonl)")
    cells.add_argument("--train", metavar="FILE",
                       help="sessions the read gates are learned from first (default: the "
                            "bundled user-facts-dev.jsonl)")
    cells.add_argument("--json", action="store_true")
    cells.add_argument("--resume-tokens", type=int, default=2000, metavar="N",
                       help="length of the session resumed from the store (default 2000)")
    learn = bench_sub.add_parser("learn", help="does a fresh session know what was taught? "
                                 "(recall, retention, locality, cost)")
    _common(learn, top=False)
    learn.add_argument("--facts", metavar="FILE", action="append",
                       help="sessions with probes in user-facts.jsonl's format, learned by a "
                            "user of their own (repeatable; default: the bundled dev, natural "
                            "and test sets, side by side)")
    learn.add_argument("--json", action="store_true")
    learn.add_argument("--sessions", type=int, metavar="N", help="only the first N sessions")
    learn.add_argument("--counterfact", type=int, default=100, metavar="N",
                       help="CounterFact cases, each learned on its own (default 100; 0 skips)")
    learn.add_argument("--details", metavar="FILE",
                       help="per-probe answers go here (default: stderr)")
    learn.add_argument("--threshold", type=float, metavar="T",
                       help="locality gate threshold for this run (default: the configured "
                            "one; 0 accepts every run, to measure the recipe alone)")
    learn.add_argument("--no-model-pairs", dest="model_pairs", action="store_false",
                       help="the served model writes no question/answer pairs of its own, to "
                            "measure what they add (a model without a chat template never does)")
    learn.add_argument("--seed", type=int, default=0, metavar="N",
                       help="the learner's random draws (default 0): rerun with a few seeds "
                            "to see how much of a figure is chance")
    learn.add_argument("--keep-home", type=Path, metavar="DIR",
                       help="keep each set's user in DIR/SET (DIR new or empty), to read what "
                            "it learned afterwards: engram --home DIR/SET memory show")

    locomo = bench_sub.add_parser("locomo", help="LoCoMo conversations learned session by "
                                  "session, then their single-hop questions (F1, contains) for "
                                  "Engram, the base model and a retrieval baseline")
    _common(locomo, top=False)
    locomo.add_argument("files", nargs="+", metavar="FILE", help="LoCoMo conversation JSON")
    locomo.add_argument("--json", action="store_true")
    locomo.add_argument("--sessions", type=int, metavar="N",
                        help="only the first N sessions, and the questions they answer")
    locomo.add_argument("--questions", type=int, metavar="N", help="only the first N questions")
    locomo.add_argument("--details", metavar="FILE", help="per-question replies go here "
                        "(default: stderr)")

    parity = bench_sub.add_parser("parity", help="does the training model (torch) compute what "
                                  "llama.cpp serves, with and without the memory?")
    _common(parity, top=False)
    parity.add_argument("--json", action="store_true")

    reliability = bench_sub.add_parser("reliability", help="kill a streaming chat and the "
                                       "memory commands at seeded moments and damage files: is "
                                       "anything lost, is every damaged file refused cleanly?")
    _common(reliability, top=False)
    reliability.add_argument("--json", action="store_true")
    reliability.add_argument("--kills", type=int, default=50, metavar="N",
                             help="kill points per operation (default 50)")
    reliability.add_argument("--operations", metavar="OP,OP…",
                             help="the operations killed, comma-separated: chat (a streaming "
                                  "reply), learn, rollback, forget, reset, export, import "
                                  "(engram memory …), kv-save (a session's KV state saved "
                                  "after a reply); default: all")
    reliability.add_argument("--fuzz", type=int, default=1400, metavar="N",
                             help="damaged-file cases in all, taken in turn: the database, an "
                                  "overlay's tensors and manifest, a KV snapshot, the twin and "
                                  "anchors caches, an export (damaged or lying) imported "
                                  "(default 1400: 200 each)")
    reliability.add_argument("--concurrent", type=int, default=5, metavar="N",
                             help="runs of two chats at once on one profile (default 5)")
    reliability.add_argument("--seed", type=int, default=0)

    memory = sub.add_parser("memory", help="what the model learned: show, learn, diff, undo")
    memory_sub = memory.add_subparsers(dest="memory", required=True, metavar="COMMAND")
    for name, text in (("show", "what is learned, what is pending"),
                       ("versions", "the overlay versions, newest first"),
                       ("learn", "learn pending sessions now and wait for the new version"),
                       ("diff", "what a version changed, with answers before and after"),
                       ("rollback", "make an earlier version active"),
                       ("forget", "remove one session from the memory"),
                       ("reset", "forget everything learned (earlier versions are kept)"),
                       ("pause", "stop learning from this profile's sessions"),
                       ("resume", "learn again"),
                       ("export", "write the active memory to a file: an archive to import "
                                  "elsewhere, or a LoRA adapter for llama.cpp, Ollama, PEFT"),
                       ("import", "add an exported archive's memory and sessions as a new "
                                  "active version")):
        command = memory_sub.add_parser(name, help=text, description=text)
        _common(command, top=False)
        if name == "learn":
            command.add_argument("--session", type=int, action="append", metavar="ID",
                                 help="learn this session even if already decided (repeatable)")
        elif name == "diff":
            command.add_argument("target", nargs="?", metavar="VERSION|sSESSION",
                                 help="a version (7 or v7) or the version that learned a "
                                      "session (s3); default: the active version")
        elif name == "rollback":
            command.add_argument("version", nargs="?", type=_version_number, metavar="VERSION",
                                 help="default: the active version's parent")
        elif name == "forget":
            command.add_argument("session", type=int, metavar="SESSION")
        elif name == "reset":
            command.add_argument("--yes", action="store_true", help="do not ask")
        elif name == "export":
            command.add_argument("path", metavar="PATH", help="a new file (a new directory "
                                 "for peft)")
            command.add_argument("--format", default="archive", metavar="archive|gguf|peft",
                                 help="archive (default): memory, sessions and cells for "
                                      "`engram memory import`; gguf: the memory as a llama.cpp "
                                      "/ Ollama LoRA adapter; peft: as a PEFT LoRA adapter")
        elif name == "import":
            command.add_argument("path", metavar="PATH", help="an archive made by `engram "
                                 "memory export`")
    return parser


def _version_number(text: str) -> int:
    """``7`` or ``v7``."""
    digits = text[1:] if text[:1] in ("v", "V") else text
    if not digits.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a version number (7 or v7)")
    return int(digits)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _resolve_model(args)
        return _dispatch(args)
    except (EngramError, StoreError, OSError) as exc:  # OSError: the disk said no (full, a file)
        print(f"engram: {exc}", file=sys.stderr)
        return 2
    except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:  # the store's checks missed it
        print(f"engram: the database could not be read ({type(exc).__name__}: {exc}); it may "
              "be damaged: quit Engram, move engram.db aside in the home (the next start "
              "begins with a new one) and restore with `engram memory import FILE`",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _engine(args):
    from engine.engine import Engine

    engine = Engine(home=args.home, profile=args.profile, model=args.model, n_ctx=args.ctx)
    if engine.store.repaired:  # told once, whatever the command
        print(f"engram: {engine.store.repaired}", file=sys.stderr)
    return engine


def _model_folders(args) -> list[str]:
    from engine.settings import Settings
    from store import paths
    from store.store import Store

    store = Store(paths.database(paths.home(args.home)))
    try:
        return Settings.from_saved(store.profile(args.profile).settings).model_folders
    finally:
        store.close()


def _resolve_model(args) -> None:
    """``--model`` as a path, or as a name ``engram models`` lists: resolved once, here."""
    if args.model is not None and not Path(args.model).expanduser().exists():
        from engine.model_catalog import resolve

        args.model = str(resolve(args.model, _model_folders(args)))


def _dispatch(args) -> int:
    if args.command == "models":
        from engine import model_catalog

        models = model_catalog.listing(_model_folders(args))
        if args.json:
            print(json.dumps([vars(m) for m in models], indent=1))
        elif models:
            print(model_catalog.report(models))
        else:
            print("no GGUF models found (Ollama, LM Studio, Hugging Face and llama.cpp caches, "
                  "settings' model_folders)", file=sys.stderr)
        return 0
    if args.command == "doctor":
        from engine import doctor

        result = doctor.run(args.home, args.model)
        print(json.dumps(result, indent=1) if args.json else doctor.report(result))
        return 0
    if args.command == "setup":
        from engine.model_file import open_model

        model = open_model(args.model)
        print(f"model ready: {model.path} ({model.architecture}, sha256 {model.sha256[:12]}…)")
        return 0
    if args.command == "sessions":
        from app.terminal import inert

        engine = _engine(args)
        rows = engine.sessions(args.search)
        if args.json:
            print(json.dumps([vars(s) for s in rows], indent=1))
        for s in [] if args.json else rows:
            flag = " (private)" if s.private else ""
            when = s.updated_at[:16].replace("T", " ")
            print(f"{s.id:>5}  {when}  {s.message_count:>3} msgs  {inert(s.title)}{flag}")
        if not rows and not args.json:
            print("no sessions yet: start one with `engram`", file=sys.stderr)
        return 0
    if args.command == "bench" and args.bench == "learn":
        from engine.bench import learn

        details = open(args.details, "w") if args.details else contextlib.nullcontext(sys.stderr)
        with details as stream:
            result = learn.run(args.model, args.facts, args.sessions, args.counterfact,
                               args.threshold, stream, model_pairs=args.model_pairs,
                               seed=args.seed, keep=args.keep_home)
        print(json.dumps(result) if args.json else learn.report(result))
        return 0
    if args.command == "bench" and args.bench == "locomo":
        from engine.bench import locomo

        details = open(args.details, "w") if args.details else contextlib.nullcontext(sys.stderr)
        with details as stream:
            results = [locomo.run(f, args.model, args.sessions, args.questions, stream)
                       for f in args.files]
        print(json.dumps(results) if args.json else locomo.report(results))
        return 0
    if args.command == "bench" and args.bench == "cells":
        from engine.bench import cells

        result = cells.run(args.model, args.facts and Path(args.facts),
                           args.topics and Path(args.topics), args.train and Path(args.train),
                           resume_tokens=args.resume_tokens)
        print(json.dumps(result) if args.json else cells.report(result))
        return 0
    if args.command == "bench" and args.bench == "reliability":
        from engine.bench import reliability

        result = reliability.run(args.model, args.kills, args.fuzz, args.seed, args.concurrent,
                                 args.operations and args.operations.split(","),
                                 log=lambda line: print(line, file=sys.stderr, flush=True))
        print(json.dumps(result) if args.json else reliability.report(result))
        return 0 if not result["failures"] and result["chat_after_kills"] else 1
    if args.command == "bench" and args.bench == "parity":
        from engine.bench import parity

        with contextlib.closing(_engine(args)) as engine:
            result = parity.run(engine)
        print(json.dumps(result) if args.json else parity.report(result))
        return 0
    if args.command == "bench":
        from engine.bench import generate

        result = generate.run(args.model, tokens=args.tokens, repetitions=args.repetitions)
        print(json.dumps(result) if args.json else generate.report(result))
        return 0
    if args.command == "memory":
        from app import memory_cli

        with contextlib.closing(_engine(args)) as engine:
            return memory_cli.run(engine, args)
    if args.command == "chat" and args.plain:
        from app import plain_chat

        with contextlib.closing(_engine(args)) as engine:  # closing stops background learning
            return plain_chat.run(engine, args.session, args.private,
                                  sys.stdin.buffer, sys.stdout, sys.stderr)
    from app.tui import run_tui

    return run_tui(_engine(args), session_id=getattr(args, "session", None),
                   private=getattr(args, "private", False))


if __name__ == "__main__":
    sys.exit(main())
