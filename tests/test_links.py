"""Link specs say what they charge: rtt= (a hop charges half) or delay= (a hop charges all)."""
from __future__ import annotations

import pytest

from tvmsplit.devices import LINK_PROFILES, Link
from tvmsplit.errors import TvmsplitError

from cli_helpers import invoke


def test_rtt_and_delay_are_the_two_conventions_of_one_link():
    by_rtt = Link.profile("wan:1.6/1.6/rtt=40ms")
    by_delay = Link.profile("wan:1.6/1.6/delay=20ms")
    assert by_rtt == by_delay
    assert by_rtt.delay_s == pytest.approx(0.020) and by_rtt.rtt_s == pytest.approx(0.040)
    # one hop of 1000 bytes: 8000 bits at 1.6 Mbit/s = 5 ms, plus the one-way delay (20 ms)
    assert by_delay.up_ms(1000) == pytest.approx(5.0 + 20.0)
    assert by_delay.down_ms(1000) == pytest.approx(5.0 + 20.0)
    assert by_delay.up_ms(0) == 0.0  # nothing sent, nothing charged


def test_full_ping_per_hop_is_delay_equal_to_the_ping():
    """Scission charges its whole ping once per hop: delay=PING charges exactly that."""
    link = Link.profile("pi-edge:1.6/1.6/delay=66.7ms")
    nbytes = 150_000
    assert link.up_ms(nbytes) == pytest.approx(66.7 + nbytes / (1.6 * 125_000) * 1e3)


def test_the_old_bare_number_is_an_rtt_and_still_works():
    assert Link.profile("lan:100/50/2") == Link.profile("lan:100/50/rtt=2ms")
    assert Link.profile("lan:100/50/2").up_ms(0.0) == 0.0
    assert Link.profile("lan:100/50/2").transfer_s(1) == pytest.approx(8 / 100e6 + 0.001)
    assert Link.profile("lan:100/50") == Link("lan", 100e6, 50e6, 0.0)


@pytest.mark.parametrize("spec, rtt_s, loss", [
    ("x:10/20/delay=0.1s", 0.2, 0.0), ("x:10/20/rtt=7", 0.007, 0.0),
    ("x:10/20/delay=5ms/loss=0.01", 0.010, 0.01), ("X:10/20/LOSS=0.5", 0.0, 0.5)])
def test_fields_and_units(spec, rtt_s, loss):
    link = Link.profile(spec)
    assert (link.name, link.up_bps, link.down_bps) == ("x", 10e6, 20e6)
    assert link.rtt_s == pytest.approx(rtt_s) and link.loss == loss


def test_a_built_in_profile_takes_an_override():
    four = LINK_PROFILES["4g"]
    assert Link.profile("4g") == four
    assert Link.profile("4g/delay=40ms") == Link("4g", four.up_bps, four.down_bps, 0.080)
    assert Link.profile("wifi/rtt=1s").rtt_s == 1.0


@pytest.mark.parametrize("link", [*LINK_PROFILES.values(), Link("w", 1.6e6, 2e6, 0.1334, 0.02)])
def test_spec_reads_back_into_the_same_link(link):
    again = Link.profile(link.spec())
    assert again.rtt_s == pytest.approx(link.rtt_s)
    assert (again.name, again.up_bps, again.down_bps, again.loss) == (
        link.name, link.up_bps, link.down_bps, link.loss)
    assert "/delay=" in link.spec()


def test_bad_specs_list_every_problem_at_once():
    with pytest.raises(TvmsplitError) as err:
        Link.profile("x:a/b/rtt=1ms/delay=2ms/jitter=3")
    msg = str(err.value)
    for part in ("rates 'a/b' are not numbers", "give one rtt= or delay=", "unknown field 'jitter=3'",
                 "rtt=TIME"):
        assert part in msg
    for spec, part in (("5g", "unknown link profile '5g'"), ("x:1", "give both rates"),
                       ("x:1/1/rtt=-1ms", "finite time >= 0"), ("x:1/1/delay=soon", "not a time"),
                       (":1/1", "has no name"), ("x:1/1/rtt=1ms/rtt=2ms", "once")):
        with pytest.raises(TvmsplitError, match=part):
            Link.profile(spec)


@pytest.mark.parametrize("command", ["plan", "evaluate"])
def test_every_link_option_documents_what_a_hop_charges(command):
    out = invoke(command, "--help", terminal_width=400).output
    flat = " ".join(out.split())
    for part in ("rtt=TIME", "delay=TIME", "RTT/2", "one way", "bytes x 8 / rate + the one-way delay",
                 "NAME:UP/DOWN/RTT_MS"):
        assert part in flat, (command, part)
