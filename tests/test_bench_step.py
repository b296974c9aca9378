"""``make bench-step``'s line from logged steps: means after the warm-up step, SAM2's share (hand-computed)."""

from bench.step import step_line


def _step(step: float, gen: float, served: float) -> dict:
    return {
        "timing_s/step": step,
        "timing_s/gen": gen,
        "timing_s/old_log_prob": 1.0,
        "timing_s/update_actor": 2.0,
        "sam/served_s": served,
    }


def test_the_first_step_warms_up_and_is_left_out():
    line = step_line("samr1", [_step(100.0, 50.0, 40.0), _step(10.0, 4.0, 1.0), _step(30.0, 6.0, 3.0)])
    assert line == (
        "bench-step: recipe=samr1 step_s=20.00 gen_s=5.00 reward_s=2.00 old_log_prob_s=1.00 update_actor_s=2.00 "
        "sam_share=0.100"
    )


def test_a_single_step_is_measured_as_it_is():
    assert step_line("veteran", [_step(8.0, 4.0, 2.0)]).endswith(
        "reward_s=2.00 old_log_prob_s=1.00 update_actor_s=2.00 sam_share=0.250"
    )
