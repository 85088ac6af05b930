"""The committed trials (apl_core.trial_store): the results file read back and named when
damaged, the locked store a search adds its trials to, and a finished study folded into the
committed results with the protocol each NPC's rows ran under."""
from __future__ import annotations

import json

import pytest

from apl_core import trial_store
from apl_core.trial_store import (
    TrialStore, adopt_study, describe_protocol, load_search, npc_protocols, protocol_summary,
)


def trial(lr, val, method="BENCHMARK", npc=10, epochs=10):
    return dict(method=method, npc=npc, lr=lr, val_top1=val, best_epoch=8, epochs=epochs,
                train_top1=0.5, run=f"{method}-{npc}-{lr}")


def test_trial_store_adds_finds_and_replaces_trials(tmp_path):
    path = tmp_path / "results" / "in_progress" / "search.json"  # its folders made
    store = TrialStore(path, {"profile": "smoke"})
    assert store.read() == {"profile": "smoke", "trials": []} and store.find("a") is None
    store.add(trial(1e-3, 0.2))
    store.add(trial(1e-2, 0.3))
    store.add(trial(1e-3, 0.25))  # the same run again: replaced, not repeated
    assert [t["val_top1"] for t in store.read()["trials"]] == [0.3, 0.25]
    assert store.find("BENCHMARK-10-0.01")["val_top1"] == 0.3
    # another process's header (a later date, say) wins; the trials are kept
    TrialStore(path, {"profile": "smoke", "date": "later"}).add(trial(1e-4, 0.1))
    results = json.loads(path.read_text())
    assert results["date"] == "later" and len(results["trials"]) == 3
    # a rerun that has nothing left to add still names itself
    TrialStore(path, {"profile": "smoke", "date": "final"}).write_header()
    results = json.loads(path.read_text())
    assert results["date"] == "final" and len(results["trials"]) == 3


def test_rows_set_aside_leave_the_trials_and_are_kept_with_the_reason(tmp_path):
    store = TrialStore(tmp_path / "search.json", {"profile": "smoke"})
    for lr in (1e-3, 1e-2, 1e-1):
        store.add(trial(lr, 0.2))
    store.set_aside({"BENCHMARK-10-0.001", "BENCHMARK-10-0.1"}, "its pretraining is gone")
    store.set_aside({"BENCHMARK-10-0.01"}, "and this one's")
    results = store.read()
    assert results["trials"] == [] and store.find("BENCHMARK-10-0.01") is None
    assert [(t["run"], t["reason"]) for t in results["set_aside"]] == [
        ("BENCHMARK-10-0.001", "its pretraining is gone"),
        ("BENCHMARK-10-0.1", "its pretraining is gone"), ("BENCHMARK-10-0.01", "and this one's")]
    assert results["set_aside"][0] == {**trial(1e-3, 0.2), "reason": "its pretraining is gone"}
    store.add(trial(1e-3, 0.4))  # run again under its name: a trial again, the record kept
    assert store.find("BENCHMARK-10-0.001")["val_top1"] == 0.4
    assert len(store.read()["set_aside"]) == 3


@pytest.mark.parametrize("text", ["{not json", '{"profile": "quick"}', "[]"])
def test_a_damaged_results_file_is_named_with_how_to_restore_it(tmp_path, text):
    path = tmp_path / "search.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"{path} is not a search results file .*restore it "
                                         f"with git checkout, or delete it"):
        TrialStore(path, {}).find("a")


def test_adopt_study_replaces_only_its_npcs_rows_and_keeps_its_provenance():
    committed = {"profile": "quick", "command": "search", "machine": "A", "torch": "1",
                 "protocol": {"trials": 5, "max_steps": {"10": 400, "100": 960}},
                 "trials": [trial(1e-4, 0.2), trial(1e-4, 0.3, npc=100, epochs=30)]}
    study = {"profile": "quick", "command": "study", "machine": "B", "torch": "2",
             "precision": "fp32", "date": "2026-12-04", "workers": 2,
             "protocol": {"trials": 5, "max_steps": {"10": 400, "100": 3840}},
             "trials": [trial(3e-4, 0.5, npc=100, epochs=120), trial(3e-4, 0.9, npc=30)]}
    adopted = adopt_study(committed, study, [100])
    assert adopted["trials"] == [trial(1e-4, 0.2), trial(3e-4, 0.5, npc=100, epochs=120)]
    assert "replaced_trials" not in adopted  # kept apart only when asked (a seeds file)
    assert adopted["protocol"] == {"trials": 5, "max_steps": {"10": 400, "100": 3840}}
    assert (adopted["command"], adopted["machine"], "workers" in adopted) == ("search", "A", False)
    assert adopted["studies"] == [{"npcs": [100], "command": "study", "machine": "B",
                                   "precision": "fp32", "torch": "2", "date": "2026-12-04"}]
    again = adopt_study(adopted, {**study, "command": "study again"}, [100])
    assert [s["command"] for s in again["studies"]] == ["study again"]  # it replaces the last
    at_30 = adopt_study(adopted, {**study, "command": "study at 30",
                                  "protocol": {"trials": 5, "max_steps": {"30": 1000}}}, [30])
    assert [s["command"] for s in at_30["studies"]] == ["study", "study at 30"]  # one per NPC
    # each NPC's protocol: the study's where it replaced the rows, the committed one's elsewhere
    assert adopted["protocols"] == {"10": {"recipes": ["base"], "lengths": "paired test"},
                                    "100": {"recipes": ["base"], "lengths": "paired test"}}
    newer = adopt_study(adopted, {**study, "protocol": {**study["protocol"], "small_data": {}}},
                        [100])
    assert newer["protocols"]["100"]["recipes"] == ["base", "small-data"]
    assert newer["protocols"]["10"] == adopted["protocols"]["10"]
    old_seeds = {"trials": [{"seed": 1, "npc": 100, "run": "old"},
                            {"seed": 1, "npc": 10, "run": "kept"}]}
    seeds_study = {"command": "seeds study", "machine": "B", "torch": "2"}
    seeds = adopt_study(old_seeds, {**seeds_study, "trials": [{"seed": 1, "npc": 100,
                                                               "run": "new"}]},
                        [100], keep_replaced=True)
    assert seeds["trials"] == [{"seed": 1, "npc": 10, "run": "kept"},
                               {"seed": 1, "npc": 100, "run": "new"}]
    assert "protocol" not in seeds and "protocols" not in seeds  # adopt_study.py copies them
    assert seeds["replaced_trials"] == [{"seed": 1, "npc": 100, "run": "old"}]
    at_10 = adopt_study(seeds, {**seeds_study, "trials": [{"seed": 1, "npc": 10,
                                                           "run": "newer"}]},
                        [10], keep_replaced=True)
    assert [row["run"] for row in at_10["replaced_trials"]] == ["old", "kept"]
    with pytest.raises(ValueError, match=r"no rows at NPC \[10\]"):
        adopt_study(committed, study, [10, 100])


def test_a_protocol_is_named_in_the_words_of_the_docs_tables():
    current = protocol_summary({"trials": 5, "small_data": {"mixup": 0.8}})
    assert current == {"recipes": ["base", "small-data"], "lengths": "paired test"}
    assert describe_protocol(current) == "base and small-data recipes, lengths by the paired test"
    earlier = protocol_summary({"trials": 5, "late_fraction": 0.2})
    assert earlier == {"recipes": ["base"], "lengths": "late check"}
    assert describe_protocol(earlier) == (
        "base recipe only, length by the earlier late check (a doubled run never adopted)")


def test_an_npc_reads_the_protocol_a_study_adopted_there_over_the_headers():
    earlier = {"recipes": ["base"], "lengths": "late check"}
    results = {"protocol": {"trials": 5, "small_data": {}}, "protocols": {"100": earlier},
               "trials": [trial(1e-4, 0.2, npc=100), trial(1e-4, 0.3, npc=10)]}
    assert npc_protocols(results) == {
        10: {"recipes": ["base", "small-data"], "lengths": "paired test"}, 100: earlier}
    assert list(npc_protocols(results)) == [10, 100]
    # a seeds file without a header protocol: a study's protocols only
    assert npc_protocols({"protocols": {"100": earlier}, "trials": []}) == {100: earlier}


def test_the_committed_quick_search_is_read_and_a_damaged_one_named(tmp_path, monkeypatch):
    committed = load_search("quick")
    assert committed["profile"] == "quick" and len(committed["trials"]) >= 25
    study = tmp_path / "study" / "quick_npc100_search.json"
    assert load_search("quick", study) is None
    TrialStore(study, {"profile": "quick"}).add(trial(1e-4, 0.2))
    assert load_search("quick", study)["trials"] == [trial(1e-4, 0.2)]
    monkeypatch.setattr(trial_store, "RESULTS_DIR", tmp_path)
    assert load_search("quick") is None
    (tmp_path / "quick_converged_search.json").write_text("{cut")
    with pytest.raises(ValueError, match="quick_converged_search.json is not a converged search "
                                         "results file.*git checkout.*converged_search.py "
                                         "--profile quick"):
        load_search("quick")


def test_the_committed_npc_100_reads_as_the_earlier_protocol():
    """NPC 100 is not searched again (too costly on 2 cores): its committed rows ran the base
    recipe alone, lengthened by the earlier late check, and the results say so."""
    assert npc_protocols(load_search("quick"))[100] == {"recipes": ["base"],
                                                        "lengths": "late check"}
