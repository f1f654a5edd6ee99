"""The runner's quiescence arithmetic (pure), and the start-up command hold."""

from __future__ import annotations

from templater.config import TemplateConfig, WaitConfig
from templater.runner import TemplateState


def state(wait: WaitConfig | None) -> TemplateState:
    return TemplateState(TemplateConfig(destination="out", contents="x"), wait)


def test_first_render_is_immediate_then_changes_wait_for_quiet() -> None:
    s = state(WaitConfig(1.0, 3.0))
    s.mark_dirty(100.0)
    assert s.ready(100.0)  # never rendered: no quiescence
    s.rendered()
    s.rendered_once = True
    s.mark_dirty(200.0)
    assert not s.ready(200.5) and s.ready(201.0)


def test_each_change_restarts_min_but_max_caps_the_wait() -> None:
    s = state(WaitConfig(1.0, 3.0))
    s.rendered_once = True
    for now in (10.0, 10.8, 11.6, 12.4):  # a change every 0.8 s: min alone would never fire
        s.mark_dirty(now)
        assert not s.ready(now + 0.5)
    assert s.quiet_until == 13.0 and s.ready(13.0)  # deadline = first change + max
    s.rendered()
    s.mark_dirty(20.0)
    assert s.quiet_until == 21.0  # a new burst gets a new deadline


def test_no_wait_or_edits_render_at_once() -> None:
    s = state(None)
    s.rendered_once = True
    s.mark_dirty(5.0)
    assert s.ready(5.0)
    t = state(WaitConfig(2.0, 8.0))
    t.rendered_once = True
    t.mark_dirty(5.0, immediate=True)  # a template edit does not wait
    assert t.ready(5.0)
