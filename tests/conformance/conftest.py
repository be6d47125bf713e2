"""Prints the ONNX node-conformance pass count at the end of the test session."""


def pytest_terminal_summary(terminalreporter):
    def count(kind):
        return sum(
            1
            for r in terminalreporter.stats.get(kind, [])
            if "test_onnx_node_conformance.py::NodeTests::" in getattr(r, "nodeid", "")
        )

    passed, failed = count("passed"), count("failed")
    if passed or failed:
        from tests.conformance.test_onnx_node_conformance import EXCLUDED, excluded_tests

        terminalreporter.write_line(
            f"ONNX node conformance: {passed} passed, {failed} failed, "
            f"{len(excluded_tests())} excluded by {len(EXCLUDED)} rules "
            "(listed in tests/conformance/test_onnx_node_conformance.py)"
        )
