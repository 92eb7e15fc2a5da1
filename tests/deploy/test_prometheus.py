"""Prometheus config and alert rules, checked by Prometheus' own promtool (Debian package
`prometheus`: apt-get install -y prometheus, which provides /usr/bin/promtool), and the scrape jobs
checked against docker-compose.yml (every service scraped on the port it serves)."""

from __future__ import annotations

import pytest

from tests.deploy import deployfiles as df


def _promtool() -> str:
    promtool = df.tool("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed; CI: apt-get install -y prometheus")
    return promtool


def test_promtool_check_config_passes() -> None:
    res = df.run([_promtool(), "check", "config", df.PROMETHEUS.name], cwd=df.PROMETHEUS.parent)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{len(df.RULES)} rule files found" in res.stdout + res.stderr


def test_promtool_check_rules_passes() -> None:
    assert df.RULES
    res = df.run([_promtool(), "check", "rules", *map(str, df.RULES)])
    assert res.returncode == 0, res.stdout + res.stderr


def test_promtool_alert_unit_tests_pass() -> None:
    assert df.RULE_TESTS
    res = df.run([_promtool(), "test", "rules", *(p.name for p in df.RULE_TESTS)], cwd=df.RULE_TESTS[0].parent)
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_service_is_scraped_by_dns_on_the_port_it_serves() -> None:
    """dns_sd (type A) on the compose service name: one target per replica under --scale."""
    jobs = {j["job_name"]: j for j in df.load_yaml(df.PROMETHEUS)["scrape_configs"]}
    for name, svc in df.APP_SERVICES.items():
        port = int(df.environment(name)["HTTP_PORT"])
        job = jobs[svc]
        sd = [c for c in job.get("dns_sd_configs", []) if name in c["names"]]
        assert sd, f"{name} is in no dns_sd_configs of job {svc}"
        assert sd[0]["type"] == "A" and sd[0]["port"] == port, (name, sd[0])
    compose_services = set(df.compose()["services"])
    for job in jobs.values():
        for sd in job.get("dns_sd_configs", []):
            assert set(sd["names"]) <= compose_services, sd["names"]
    # the mount the config is read from
    assert any(v.startswith("./deploy/prometheus:/etc/prometheus") for v in df.service("prometheus")["volumes"])


def test_every_alert_has_severity_summary_and_description() -> None:
    for path in df.RULES:
        for group in df.load_yaml(path)["groups"]:
            for rule in group["rules"]:
                assert rule["labels"]["severity"] in ("info", "warning", "critical"), rule["alert"]
                assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
