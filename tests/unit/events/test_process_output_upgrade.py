"""A ProcessStarted recorded before passthrough existed (no `log_format` in its facts) still
decodes, as a k8s-file process, so the server reads its output from conmon's log."""

from __future__ import annotations

import msgspec

from garden.events import schema as ev

OLD = (
    b'{"type":"ProcessStarted","handle":"h","process_id":"p","facts":{"container_id":"c",'
    b'"process_dir":"/d/p","socket_link":"/run/x","pid":10,"pid_start_time":5,"conmon_pid":9,'
    b'"conmon_start_time":4,"tty":false,"stdin":false},"args":["sh"]}'
)


def test_an_old_process_started_event_is_a_k8s_file_process() -> None:
    event = msgspec.json.decode(OLD, type=ev.AnyEvent)
    assert isinstance(event, ev.ProcessStarted)
    assert event.facts.log_format == "k8s-file"
    assert str(event.facts.log_path) == "/d/p/log"


def test_a_passthrough_process_round_trips() -> None:
    event = msgspec.json.decode(OLD, type=ev.AnyEvent)
    assert isinstance(event, ev.ProcessStarted)
    new = msgspec.structs.replace(
        event, facts=msgspec.structs.replace(event.facts, log_format="passthrough")
    )
    again = msgspec.json.decode(msgspec.json.encode(new), type=ev.AnyEvent)
    assert isinstance(again, ev.ProcessStarted)
    assert again.facts.log_format == "passthrough"
