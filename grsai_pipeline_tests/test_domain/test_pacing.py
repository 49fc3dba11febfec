"""When to poll a task next (issue 25): sparingly far from the end, every interval near it,
never longer than the max gap, and today's fixed interval when nothing is known."""

from __future__ import annotations

import pytest

from grsai_pipeline.domain.pacing import (
    LATENESS_SHARE_MAX,
    NO_PROGRESS_SHARE,
    PROGRESS_SHARE,
    PROGRESS_SLACK,
    ModelDurations,
    Pace,
    next_poll_in,
)

PACE = Pace(interval_s=2.0, max_gap_s=60.0)
SORA = ModelDurations.of([150.0, 160.0, 180.0, 200.0, 240.0, 300.0])


def wait(
    elapsed: float,
    progress: int | None = None,
    before: int | None = None,
    durations: ModelDurations | None = None,
    pace: Pace = PACE,
) -> float:
    return next_poll_in(
        pace, elapsed_s=elapsed, progress=progress, progress_before=before, durations=durations
    )


def test_with_nothing_known_it_polls_every_interval() -> None:
    assert wait(0.0) == 2.0
    assert wait(100.0, progress=0, before=0) == 2.0
    assert ModelDurations.of([100.0] * 4) is None  # too short a history to trust


def test_far_before_the_model_s_early_end_it_waits_up_to_the_max_gap() -> None:
    assert SORA is not None and SORA.early_s == 150.0
    assert wait(0.0, durations=SORA) == 58.0  # the max gap less an interval: round trips
    assert wait(100.0, durations=SORA) == pytest.approx(40.0)  # 0.8 x the 50 s left
    assert wait(149.0, durations=SORA) == 2.0
    # Past it, with no progress: six tasks are too few to say when the survivors end.
    assert wait(200.0, durations=SORA) == 2.0


def test_with_no_progress_past_the_early_end_the_survivors_of_the_history_pace_it() -> None:
    """The wait ends before more than 3 % of the history's tasks that ran as long have ended;
    near the history's last ones, too few ran as long to tell, so every interval."""
    history = ModelDurations.of([100.0 + k for k in range(100)])
    assert history is not None and NO_PROGRESS_SHARE == 0.03
    assert wait(150.0, progress=0, before=0, durations=history) == pytest.approx(2.0)
    assert wait(150.0, durations=history) == pytest.approx(2.0)
    spread = ModelDurations.of([100.0 + 10 * k for k in range(100)])  # 100-1090 s
    assert spread is not None
    # 85 ran 250 s or more (250 ... 1090); 2 of them may end within the wait, the 3rd at 270 s.
    assert wait(250.0, progress=0, before=0, durations=spread) == pytest.approx(20.0)
    assert wait(1000.0, progress=0, before=0, durations=spread) == 2.0  # 9 left: too few
    # A figure to pace by wins over the history's survivors.
    assert wait(250.0, progress=90, before=89, durations=spread) < 20.0


def test_a_task_ended_at_its_first_poll_counts_in_the_history() -> None:
    """Its duration is 0 at the least (store/durations.py): the history then says tasks can
    end at once, and the first poll comes after the interval, not a long wait."""
    quick = ModelDurations.of([0.0] * 10 + [120.0] * 90)
    assert quick is not None and quick.early_s == 0.0
    assert wait(0.0, durations=quick) == 2.0


def test_rising_progress_shortens_the_waits_as_the_end_nears() -> None:
    waits = [wait(elapsed, progress=int(elapsed / 2), before=0) for elapsed in (20, 100, 180)]
    assert waits == sorted(waits, reverse=True)
    assert (PROGRESS_SHARE, PROGRESS_SLACK) == (0.6, 3)
    # At 10 % after 20 s: the end is due at 20 x 100 / 13 (the figure + 3 points); 0.6 of the
    # time left is over the longest wait.
    assert waits[0] == 58.0
    assert waits[-1] == pytest.approx(0.6 * (180 * 100 / 93 - 180))  # 8.1 s at 90 %
    assert wait(198.0, progress=99, before=98) == 2.0


@pytest.mark.parametrize(
    ("progress", "before"),
    [(40, 55), (0, 0), (None, 30), (100, 99)],
    ids=["went backwards", "never moved from 0", "no progress", "at 100 still running"],
)
def test_progress_that_tells_nothing_falls_back_to_the_interval(
    progress: int | None, before: int | None
) -> None:
    assert wait(300.0, progress=progress, before=before) == 2.0


def test_never_longer_than_the_max_gap_and_never_shorter_than_the_interval() -> None:
    for elapsed in (0.0, 1.0, 10.0, 500.0, 5000.0):
        for progress in (None, 1, 50, 99):
            for durations in (None, SORA, ModelDurations.of([9000.0] * 10)):
                assert 2.0 <= wait(elapsed, progress, None, durations) <= 60.0


def test_an_engine_whose_polls_went_out_late_aims_that_much_sooner_within_a_bound() -> None:
    """Polls up to 5 s late in the last minute: the longest wait is 53 s, so a poll 5 s late
    still keeps the minute; however late, never less than half the longest wait (twice the
    polls)."""
    far = {"elapsed_s": 0.0, "progress": None, "progress_before": None, "durations": SORA}
    assert next_poll_in(PACE, **far, late_s=5.0) == 53.0
    assert next_poll_in(PACE, **far, late_s=500.0) == LATENESS_SHARE_MAX * 58.0
    # Near the end it polls every interval, late or not.
    assert next_poll_in(PACE, **{**far, "elapsed_s": 149.0}, late_s=5.0) == 2.0
    backstop = Pace(2.0, 60.0, callbacks=True)
    assert next_poll_in(backstop, **far, late_s=3.0) == 55.0


def test_callbacks_make_polls_a_backstop_and_an_equal_gap_fixed_polling() -> None:
    assert wait(10.0, durations=SORA, pace=Pace(2.0, 60.0, callbacks=True)) == 58.0
    assert wait(10.0, progress=1, durations=SORA, pace=Pace(2.0, 2.0)) == 2.0


def test_coarse_progress_is_paced_from_when_its_figure_appeared() -> None:
    """Steps of 25: at 75 since 150 s (of a 200 s task), the end is due by 192 s (the figure
    taken 3 points higher), however long the figure has stood; once overdue, every interval."""
    first = next_poll_in(
        PACE, elapsed_s=160.0, progress=75, progress_before=75, durations=None,
        progress_from_s=150.0,
    )  # fmt: skip
    later = next_poll_in(
        PACE, elapsed_s=190.0, progress=75, progress_before=75, durations=None,
        progress_from_s=150.0,
    )  # fmt: skip
    overdue = next_poll_in(
        PACE, elapsed_s=205.0, progress=75, progress_before=75, durations=None,
        progress_from_s=150.0,
    )  # fmt: skip
    end = 150 * 100 / 78  # 75 % and 3 points of slack since 150 s: 192.3 s
    assert first == pytest.approx(0.6 * (end - 160))  # 19.4 s
    assert later == 2.0  # 2.3 s left: 1.4 s, never under the interval
    assert overdue == 2.0


def test_a_task_goes_to_another_engine_only_if_its_next_read_keeps_the_gap_within_the_max() -> None:
    """An engine over its share hands tasks on; the taker polls them at its next read, up to 30 s
    away here. A task paced to 58 s and due in 10 s would wait 68 s: it stays for one more poll.
    """
    taker_within = 30.0
    assert not PACE.may_hand_on(waited_s=48.0, due_in_s=10.0, taker_reads_within_s=taker_within)
    assert PACE.may_hand_on(waited_s=20.0, due_in_s=38.0, taker_reads_within_s=taker_within)
    # Due in 10 s but answered 25 s ago: taken within 30 s, its gap is 55 s at most.
    assert PACE.may_hand_on(waited_s=25.0, due_in_s=10.0, taker_reads_within_s=taker_within)
    # Fixed-interval polling: any handover exceeds the interval once; it is never kept.
    fixed = Pace(interval_s=2.0, max_gap_s=2.0)
    assert fixed.may_hand_on(waited_s=1.5, due_in_s=0.5, taker_reads_within_s=taker_within)
