import json
import subprocess
import sys

from flexnas.cli import main

PROXYLESS_MOBILE = ("k5e3-k3e3-skip-skip-k7e3-k3e3-k5e3-k5e3-k7e6-k5e3-k5e3-k5e3-k5e6-k5e3-k5e3-k5e3-"
                    "k7e6-k7e6-k7e3-k7e3-k7e6")


def test_cost_json(capsys):
    assert main(["cost", "proxyless", PROXYLESS_MOBILE, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["macs"] == 320_427_584 and out["params"] == 4_080_512


def test_cost_at_cifar_size(capsys):
    assert main(["cost", "proxyless", PROXYLESS_MOBILE, "--input-size", "32", "--num-classes", "10",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["input_size"] == 32


def test_user_errors_are_one_line_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "flexnas", "cost", "proxyless", "k3e6-bogus"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "21 layers" in proc.stderr


def test_sample_prints_decodable_strings(capsys):
    from flexnas import spaces

    assert main(["sample", "spos", "-n", "3", "--input-size", "32"]) == 0
    lines = capsys.readouterr().out.split()
    space = spaces.get("spos", input_size=32)
    assert len(lines) == 3 and all(space.encode(space.decode(l)) == l for l in lines)
