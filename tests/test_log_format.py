"""`--log-format json`: one JSON object per line, with a call's fields on its line."""

import json
import logging
import os

from graphs import neuron
from servers import Served

from gradserve.client import connect
from gradserve.server.service.log_format import JsonFormatter
from gradserve.server.service.logs import CallLog
from gradserve.v1 import gradserve_pb2 as pb


def formatted(record: logging.LogRecord) -> dict:
    line = JsonFormatter().format(record)
    assert "\n" not in line
    return json.loads(line)


class Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_call_line_carries_its_fields():
    logger = logging.getLogger("test_log_format.call")
    kept = Kept()
    logger.handlers[:] = [kept]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    call_log = CallLog(logger)
    call_log.add("Evaluate", 10, "OK", 1.23456, rows=4, peer="ipv4:127.0.0.1:5", trace_id="ab" * 16)
    call_log.flush()
    (record,) = kept.records
    assert record.getMessage() == "Evaluate nodes=10 status=OK 1.2 ms"  # the text line
    line = formatted(record)
    assert line["message"] == "Evaluate nodes=10 status=OK 1.2 ms"
    assert (line["method"], line["nodes"], line["rows"], line["status"]) == (
        "Evaluate",
        10,
        4,
        "OK",
    )
    assert line["duration_ms"] == 1.235
    assert line["peer"] == "ipv4:127.0.0.1:5" and line["trace_id"] == "ab" * 16
    assert line["level"] == "INFO" and line["logger"] == "test_log_format.call"
    assert line["time"].endswith("+00:00") and line["pid"] == os.getpid()


def test_an_exception_stays_on_one_line():
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        record = logging.getLogger("x").makeRecord(
            "x", logging.ERROR, "", 0, "failed: %s", ("it",), exc_info=__import__("sys").exc_info()
        )
    line = formatted(record)
    assert line["message"] == "failed: it" and line["level"] == "ERROR"
    assert "ValueError: bad\nvalue" in line["exception"]
    assert "method" not in line  # not a call line


def json_lines(log: str) -> list[dict]:
    return [json.loads(line) for line in log.splitlines()]


def test_the_server_writes_json_lines_for_every_record_and_call():
    env = {**os.environ, "GRADSERVE_LOG_FORMAT": "json"}  # the variable works as the flag does
    with Served("--workers", "1", env=env) as served:
        g, _ = neuron()
        graph = g.proto()
        batch = pb.EvaluateRequest(graph=graph, rows=3)
        del batch.graph.leaf_values[:]
        batch.graph.leaf_values.extend(list(graph.leaf_values) * 3)
        channel, stub = connect(f"127.0.0.1:{served.port}")
        with channel:
            stub.Evaluate(pb.EvaluateRequest(graph=graph))
            stub.Evaluate(batch)
        served.wait_for(r'"rows": 3')
        served.stop()
    lines = json_lines(served.log)  # every line parses
    assert any(line["message"].startswith("serving on") for line in lines)
    calls = [line for line in lines if line.get("method") == "Evaluate"]
    assert [(c["nodes"], c["rows"], c["status"]) for c in calls] == [(10, 1, "OK"), (10, 3, "OK")]
    for call in calls:
        assert call["peer"].startswith("ipv4:127.0.0.1:") and call["duration_ms"] > 0
        assert call["logger"] == "gradserve.server.service.servicer"
