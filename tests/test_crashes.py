"""kill -9 during a streamed reply, at seeded moments, and two chats at once on one profile, on
real processes and the tiny model: nothing acknowledged is lost, the database stays whole, and
the next chat works."""

from __future__ import annotations

from dataclasses import replace

from engine.bench.aftermath import chat_works
from engine.bench.reliability import concurrent_trial, crash_trial
from engine.engine import Engine


def test_killed_while_streaming_loses_nothing_acknowledged(tmp_path, tiny_model):
    home = tmp_path / "home"
    engine = Engine(home, model=tiny_model)
    engine.save_settings(replace(engine.settings, max_tokens=32))  # replies short enough to
    engine.close()                                                  # see some finish first
    trials = [crash_trial(home, str(tiny_model), seed, window=2.0) for seed in range(4)]
    assert all(t["survived"] for t in trials), trials
    assert sum(t["acknowledged"] for t in trials) >= 1, trials  # the check had work to do
    assert chat_works(home, str(tiny_model))


def test_two_chats_at_once_on_one_profile_keep_every_message(tmp_path, tiny_model):
    home = tmp_path / "home"
    engine = Engine(home, model=tiny_model)
    engine.save_settings(replace(engine.settings, max_tokens=16))
    engine.close()
    trial = concurrent_trial(home, str(tiny_model), seed=0, messages=4)
    assert trial["survived"] and trial["lost_messages"] == 0, trial
    engine = Engine(home, model=tiny_model)
    stored = [m.content for s in engine.sessions() for m in engine.messages(s.id)
              if m.role == "user"]
    engine.close()
    assert sorted(stored) == sorted(f"concurrent 0 chat {p} message {i}"
                                    for p in range(2) for i in range(4))
