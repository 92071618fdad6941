"""What a refused deploy looks like in a test report: this test fails on
purpose. Not collected by default (not test_*.py);
tests/integration/test_testing_plugin.py runs it by path and reads the report."""

from pathlib import Path


def test_deploy_broken_module(cweb):
    cweb.deploy(Path(__file__).resolve().parent / "modules" / "broken.c")
