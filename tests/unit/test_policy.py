"""The configuration files: durations, the shipped demo files, and errors a person can act on.

An invalid file must stop start-up with a message naming the file, the line and the
field (SPEC.md, Configuration files); each case below writes such a file and reads the
message `services.infra.config.load_yaml_model` raises.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from services.domain.directory import DirectoryFile
from services.domain.policy import (
    CONFLICT_RULES,
    DEFAULT_EXCLUDE,
    MANDATORY_EXCLUDE,
    Policy,
    parse_duration,
)
from services.infra.auth import TokensFile
from services.infra.config import ConfigError, load_yaml_model
from services.infra.settings import CommonSettings

VALID_POLICY = """\
version: "2026-11-01"
categories:
  harassment: high
  other: high
severities:
  high:
    chain:
      - {role: hr_case_handler, acknowledge_within: 4h}
      - {role: hr_head, acknowledge_within: 8h}
    repeat_last_every: 24h
    feedback_within: 90d
reporter_acknowledgement_within: 7d
conflicts:
  exclude: [accused, accused_management_chain, accused_reports, reporter]
  independent_roles: [chief_ethics_officer]
"""
RULES = ("accused", "accused_management_chain", "reporter", "accused_reports")
"""VALID_POLICY's rules, in canonical order."""


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1h", 3600), ("7d", 604_800), ("90d", 7_776_000), (" 2h ", 7200)],
)
def test_a_duration_is_read_as_seconds(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


def test_a_positive_number_of_seconds_is_a_duration() -> None:
    assert parse_duration(45) == 45


@pytest.mark.parametrize("value", ["0s", "1w", "", "-5", -5, 0, True, False, "1.5h", "h", None])
def test_what_is_not_a_positive_duration_is_refused(value: object) -> None:
    with pytest.raises(ValueError, match="30s, 5m, 1h or 7d"):
        parse_duration(value)


def line_of(text: str, needle: str) -> int:
    """The 1-based line of `text` that contains `needle`."""
    return next(n for n, line in enumerate(text.splitlines(), 1) if needle in line)


def load(tmp_path: Path, text: str, model: type[BaseModel], name: str = "config.yaml") -> str:
    """The ConfigError message for `text` written to a file."""
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as refused:
        load_yaml_model(path, model)
    return str(refused.value)


def test_the_shipped_policy_loads() -> None:
    policy = load_yaml_model(CommonSettings().policy_file, Policy)
    critical = policy.severities[policy.categories["sexual_misconduct"]]
    assert critical.chain[0].role == "hr_case_handler"
    assert critical.chain[0].acknowledge_within == 3600
    assert set(policy.conflicts.exclude) == set(DEFAULT_EXCLUDE) == set(CONFLICT_RULES)
    # The accused, his line and the people who answer to him: in every category.
    for category in policy.categories:
        assert policy.conflicts.rules_for(category) == CONFLICT_RULES
    assert policy.conflicts.reassign_roles == ["chief_ethics_officer"]


def test_the_demo_policy_turns_on_the_same_conflict_rules() -> None:
    demo = load_yaml_model(Path(CommonSettings().policy_file).with_name("policy-demo.yaml"), Policy)
    shipped = load_yaml_model(CommonSettings().policy_file, Policy)
    assert demo.conflicts == shipped.conflicts


def test_a_policy_without_the_later_conflict_keys_loads_and_records_as_before(
    tmp_path: Path,
) -> None:
    """Triage compares a version's recorded body with the file: a file written before
    `categories` and `reassign_roles` existed must dump exactly as it did then."""
    path = tmp_path / "policy.yaml"
    path.write_text(VALID_POLICY)
    policy = load_yaml_model(path, Policy)
    assert policy.conflicts.reassign_roles == ["chief_ethics_officer"]
    assert policy.conflicts.rules_for("harassment") == RULES
    assert policy.model_dump(mode="json", exclude_none=True)["conflicts"] == {
        "exclude": ["accused", "accused_management_chain", "accused_reports", "reporter"],
        "independent_roles": ["chief_ethics_officer"],
    }
    silent = VALID_POLICY.replace(
        "  exclude: [accused, accused_management_chain, accused_reports, reporter]\n", ""
    )
    path.write_text(silent)
    assert load_yaml_model(path, Policy).conflicts.rules_for(None) == DEFAULT_EXCLUDE


def test_rules_turned_on_for_a_category_add_to_the_common_ones(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(
        VALID_POLICY
        + "  categories:\n    harassment: {exclude: [accused_reports, accused]}\n"
        + "  reassign_roles: [hr_head, chief_ethics_officer]\n"
    )
    policy = load_yaml_model(path, Policy)
    assert policy.conflicts.rules_for("harassment") == RULES
    assert policy.conflicts.rules_for("other") == RULES
    assert policy.conflicts.reassign_roles == ["hr_head", "chief_ethics_officer"]
    # Recorded in full, and read back the same.
    body = policy.model_dump(mode="json", exclude_none=True)
    assert body["conflicts"]["categories"] == {
        "harassment": {"exclude": ["accused_reports", "accused"]}
    }
    assert Policy.model_validate(body) == policy


@pytest.mark.parametrize("left_out", MANDATORY_EXCLUDE)
def test_a_policy_may_not_leave_out_the_accused_his_line_or_those_under_him(
    tmp_path: Path, left_out: str
) -> None:
    """Invariant 3: whatever the category, a report never reaches the accused, his
    management line or anyone who answers to him; a policy that says otherwise stops
    start-up at its line (a category can only add rules, so it cannot help)."""
    rules = [r for r in ("accused", "accused_management_chain", "accused_reports") if r != left_out]
    line = f"  exclude: [{', '.join(rules)}, reporter]"
    text = (
        VALID_POLICY.replace(
            "  exclude: [accused, accused_management_chain, accused_reports, reporter]", line
        )
        + f"  categories:\n    harassment: {{exclude: [{left_out}]}}\n"
    )
    message = load(tmp_path, text, Policy, "policy.yaml")
    assert message.startswith(f"{tmp_path / 'policy.yaml'}:{line_of(text, line)}: ")
    assert "conflicts.exclude" in message and left_out in message


def test_an_unknown_rule_for_a_category_is_reported_at_its_line(tmp_path: Path) -> None:
    text = VALID_POLICY + "  categories:\n    harassment: {exclude: [accused_friends]}\n"
    message = load(tmp_path, text, Policy, "policy.yaml")
    assert message.startswith(f"{tmp_path / 'policy.yaml'}:{line_of(text, 'accused_friends')}: ")
    assert "conflicts.categories.harassment.exclude" in message and "accused_friends" in message


def test_conflicts_for_a_category_the_policy_lacks_are_reported_at_its_line(
    tmp_path: Path,
) -> None:
    text = VALID_POLICY + "  categories:\n    harasment: {exclude: [accused_reports]}\n"
    message = load(tmp_path, text, Policy, "policy.yaml")
    assert message.startswith(f"{tmp_path / 'policy.yaml'}:{line_of(text, 'harasment')}: ")
    assert "conflicts.categories.harasment" in message and "does not have" in message


def test_the_shipped_directory_loads() -> None:
    directory = load_yaml_model(CommonSettings().directory_file, DirectoryFile)
    assert directory.roles_of("p-zhang") == {"ceo"}
    assert directory.roles_of("nobody") == frozenset()


def test_the_shipped_tokens_load() -> None:
    tokens = load_yaml_model(CommonSettings().tokens_file, TokensFile)
    assert any(entry.principal == "system:hris" for entry in tokens.tokens)


def test_a_small_valid_policy_loads(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(VALID_POLICY)
    policy = load_yaml_model(path, Policy)
    assert policy.reporter_acknowledgement_within == 7 * 86400
    assert policy.severities["high"].repeat_last_every == 86400


def test_a_bad_duration_is_reported_with_file_line_and_field(tmp_path: Path) -> None:
    text = VALID_POLICY.replace("acknowledge_within: 8h", "acknowledge_within: 1w")
    message = load(tmp_path, text, Policy, "policy.yaml")
    assert message.startswith(f"{tmp_path / 'policy.yaml'}:{line_of(text, '1w')}: ")
    assert "severities.high.chain.1.acknowledge_within" in message
    assert "'1w'" in message


def test_an_unknown_conflict_rule_is_reported_with_file_line_and_field(tmp_path: Path) -> None:
    text = VALID_POLICY.replace("accused_reports, reporter]", "accused_reports, best_friend]")
    message = load(tmp_path, text, Policy, "policy.yaml")
    assert message.startswith(f"{tmp_path / 'policy.yaml'}:{line_of(text, 'best_friend')}: ")
    assert "conflicts" in message and "best_friend" in message


def test_a_category_without_a_severity_is_reported_at_its_line(tmp_path: Path) -> None:
    text = VALID_POLICY.replace("other: high", "other: severe")
    message = load(tmp_path, text, Policy, "policy.yaml")
    assert message.startswith(f"{tmp_path / 'policy.yaml'}:{line_of(text, 'severe')}: ")
    assert "field categories.other" in message and "'severe'" in message


def test_an_unknown_policy_key_is_reported_at_its_line(tmp_path: Path) -> None:
    text = VALID_POLICY.replace(
        "    feedback_within: 90d", "    feedback_within: 90d\n    colour: red"
    )
    message = load(tmp_path, text, Policy, "policy.yaml")
    assert message.startswith(f"{tmp_path / 'policy.yaml'}:{line_of(text, 'colour')}: ")
    assert "severities.high.colour" in message


def test_a_missing_policy_field_is_named(tmp_path: Path) -> None:
    text = VALID_POLICY.replace('version: "2026-11-01"\n', "")
    message = load(tmp_path, text, Policy, "policy.yaml")
    assert "field version: Field required" in message


DIRECTORY = """\
people:
  - {id: p-a, name: A, unit: group, manager: null, roles: [ceo]}
  - {id: p-b, name: B, unit: group, manager: p-a, roles: [hr_head]}
  - {id: p-c, name: C, unit: group, manager: p-a, roles: []}
"""


def test_a_duplicate_person_id_is_reported_at_the_second_entry(tmp_path: Path) -> None:
    text = DIRECTORY.replace("id: p-c", "id: p-b")
    message = load(tmp_path, text, DirectoryFile, "directory.yaml")
    assert message.startswith(f"{tmp_path / 'directory.yaml'}:{line_of(text, 'name: C')}: ")
    assert "field people.2.id" in message and "'p-b' appears twice" in message


def test_a_malformed_person_id_is_reported_at_its_line(tmp_path: Path) -> None:
    text = DIRECTORY.replace("id: p-b", "id: p b")
    message = load(tmp_path, text, DirectoryFile, "directory.yaml")
    assert message.startswith(f"{tmp_path / 'directory.yaml'}:{line_of(text, 'p b')}: ")
    assert "people.1.id" in message


def test_broken_yaml_is_reported_with_file_and_line(tmp_path: Path) -> None:
    text = DIRECTORY.replace("roles: [hr_head]}", "roles: [hr_head}")
    message = load(tmp_path, text, DirectoryFile, "directory.yaml")
    where = f"{tmp_path / 'directory.yaml'}:{line_of(text, '[hr_head}')}"
    assert message.startswith(f"{where}: not valid YAML")


def test_a_missing_file_is_reported_by_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nowhere\.yaml: cannot read"):
        load_yaml_model(tmp_path / "nowhere.yaml", Policy)


def test_a_file_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    message = load(tmp_path, "- just\n- a list\n", DirectoryFile)
    assert "config.yaml:1: field (top level)" in message
