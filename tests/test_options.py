"""Configuration declared once: every option YAML names a registered entry whose dataclass
has the same fields and defaults; conf/config.yaml and the schema's defaults agree; every
``flbackdoor ...`` command in the docs composes and validates."""

from __future__ import annotations

import dataclasses
import re
import shlex

import pytest
from omegaconf import OmegaConf

from conftest import REPO, compose, resolved
from flbackdoor.config import ExperimentConfig, validate
from flbackdoor.registries import ATTACKS, DATASETS, DEFENSES, MODELS, PARTITIONERS

CONF = REPO / "conf"
GROUPS = {"defense": DEFENSES, "attack": ATTACKS}


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_every_option_yaml_is_registered_and_matches_its_dataclass(group):
    registry = GROUPS[group]
    names = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
    assert names == registry.names(), "one YAML per registered option, and back"
    for name in names:
        composed = OmegaConf.to_container(compose(f"{group}={name}")[group], resolve=True)
        declared = dataclasses.asdict(registry[name].Config())
        assert composed == declared, f"conf/{group}/{name}.yaml != {registry[name].Config}"


@pytest.mark.parametrize("group, registry", [("model", MODELS), ("dataset", DATASETS),
                                             ("partition", PARTITIONERS)])
def test_every_yaml_of_the_other_axes_is_registered(group, registry):
    for path in (CONF / group).glob("*.yaml"):
        assert OmegaConf.load(path).name in registry, path


def test_the_schema_defaults_are_the_cli_defaults():
    """ExperimentConfig() is what `flbackdoor` runs with no override (paths aside)."""
    cli = dataclasses.asdict(resolved())
    code = dataclasses.asdict(ExperimentConfig())
    for key in ("data",):
        cli.pop(key), code.pop(key)
    assert cli == code


def test_inherited_values_follow_their_source():
    cfg = resolved("client.epochs=4", "client.lr=0.2", "attack=boosted",
                   "client_defense=abl", "client_defense.lga_rounds=1")
    assert cfg.attack.epochs == 4
    assert (cfg.client_defense.unlearning_epochs, cfg.client_defense.unlearning_lr) == (4, 0.2)


def _documented_commands() -> list[tuple[str, list[str]]]:
    """Every `flbackdoor ...` command line of README.md and docs/*.md (continuations joined)."""
    found = []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = doc.read_text().replace("\\\n", " ")
        for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", text, re.S):
            for line in block.splitlines():
                line = line.split("#")[0].strip()
                for part in re.split(r"&&|;", line):
                    try:
                        words = shlex.split(part.strip())
                    except ValueError:  # a quote that closes on another line: not a command
                        continue
                    while words and re.match(r"\w+=", words[0]) and not words[0].startswith("-"):
                        words = words[1:]  # VAR=value before the command
                    if words and words[0] in ("flbackdoor", ".venv/bin/flbackdoor") and all(
                            "=" in w or w.startswith("-") or w == "job" for w in words[1:]):
                        # <placeholders> stand for what the user fills in
                        found.append((doc.name, [re.sub(r"<[^>]+>", "x", w) for w in words[1:]]))
    return found


COMMANDS = _documented_commands()


def test_the_docs_hold_commands_to_check():
    assert len(COMMANDS) > 20


@pytest.mark.parametrize("doc, args", COMMANDS, ids=[" ".join(a)[:80] for _, a in COMMANDS])
def test_every_documented_command_composes_and_validates(doc, args):
    overrides = [a for a in args if "=" in a and not a.startswith(("hydra.", "-"))
                 and not a.startswith(("resume=", "checkpoint="))]
    if any(a in ("--help", "-h", "--cfg", "--info") for a in args):
        return
    multirun = "-m" in args or "--multirun" in args
    if multirun:  # a sweep: every job of its grid must validate; check the first value of each
        overrides = [re.sub(r"=([^,\[]*),.*$", r"=\1", o) for o in overrides]
    validate(resolved(*[o for o in overrides if not o.startswith("data.root=")],
                      data_root=str(REPO / ".." / "shared" / "data")))
