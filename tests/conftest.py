"""Shared fixtures, and the test tiers.

Every test gets its own build cache so results never depend on ~/.cache.

Tiers are pytest markers given here, not in the test files: ``TIERS`` names each test module's
default tiers, ``OVERRIDES`` the tests of a module that mixes tiers, and ``FIXTURE_TIERS`` adds
the tier a fixture needs to every test that uses it. A test module missing from ``TIERS`` (or an
override naming no test) stops the collection, so a new test cannot go untiered. See the tests
section of README.md for what each tier needs and how long it takes.

The ``unit`` tier is checked, not trusted: a unit test that imports TVM, starts a subprocess or
opens/binds a socket fails, and a run of unit tests only fails when TVM got imported at all (at
collection, say). A unit test may not carry tvm/runtime/rpc/testbed too.
"""
from __future__ import annotations

import ast
import socket
import subprocess
import sys
from pathlib import Path

import pytest

# The tiers; what each needs is registered once, in pyproject.toml's markers.
TIER_MARKERS = ("unit", "tvm", "runtime", "rpc", "testbed", "cli", "slow")
# Tiers whose needs a unit test must not have.
_HEAVY = frozenset({"tvm", "runtime", "rpc", "testbed"})

# Test module -> its tests' tiers (unless OVERRIDES says otherwise for a test).
TIERS: dict[str, tuple[str, ...]] = {
    "test_check": ("unit",),
    "test_check_cli": ("cli", "tvm"),
    "test_cli": ("cli", "tvm"),
    "test_block_profile": ("unit",),
    "test_control": ("unit",),
    "test_deploy": ("tvm", "runtime"),
    "test_encoded_inputs": ("tvm", "runtime"),
    "test_evaluate_jpeg": ("testbed", "tvm", "cli"),
    "test_encoding": ("unit",),
    "test_errors": ("cli", "tvm"),
    "test_fallback": ("tvm",),
    "test_folding": ("tvm",),
    "test_fuzz": ("tvm", "runtime"),
    "test_graph": ("tvm",),
    "test_graphopt": ("tvm",),
    "test_hyps": ("unit",),
    "test_imports": ("unit",),
    "test_interrupts": ("cli", "tvm"),
    "test_launch": ("tvm", "runtime"),
    "test_links": ("unit",),
    "test_load_speed": ("tvm",),
    "test_partition": ("unit",),
    "test_plan_cli": ("cli", "tvm"),
    "test_plan_objectives": ("cli", "tvm"),
    "test_multi_cli": ("cli", "tvm"),
    "test_multi_eval": ("unit",),
    "test_predict": ("tvm",),
    "test_profile_cli": ("cli", "tvm"),
    "test_quantized": ("tvm",),
    "test_readme_commands": ("cli", "tvm", "runtime"),
    "test_profile_link": ("runtime",),
    "test_real_models": ("tvm", "slow"),
    "test_recurrent": ("tvm",),
    "test_replan": ("tvm", "runtime"),
    "test_rpc_device": ("rpc", "tvm"),
    "test_runtime": ("tvm", "runtime"),
    "test_secure": ("tvm", "runtime"),
    "test_split_build": ("tvm",),
    "test_stage_dag": ("tvm", "runtime"),
    "test_testbed": ("testbed", "tvm"),
    "test_tflite": ("tvm",),
    "test_topology": ("unit",),
    "test_transformers": ("tvm",),
    "test_tune": ("tvm", "slow"),
    "test_wire": ("unit",),
    "test_worker_conformance": ("tvm", "runtime"),
    "test_zoo": ("unit",),
}

# (module, test function) -> tiers, replacing the module's; every parametrization of it.
OVERRIDES: dict[tuple[str, str], tuple[str, ...]] = {
    **{("test_quantized", t): ("unit",) for t in (
        "test_rewrite_leaves_only_ops_tvm_imports_and_equals_onnxruntime",
        "test_integer_accumulation_is_exact_below_2_to_24",
        "test_qlinear_matmul_with_per_column_scales_equals_onnxruntime")},
    **{("test_cli", t): ("cli", "unit") for t in (
        "test_group_help", "test_no_arguments_shows_usage", "test_every_command_has_help",
        "test_commands_are_the_documented_ones", "test_version", "test_zoo_lists_the_models",
        "test_zoo_file_has_normal_permissions")},
    ("test_cli", "test_demo"): ("cli", "tvm", "runtime"),
    ("test_multi_eval", "test_per_client_edge_cgroups_enforce_their_cpu_shares"): ("testbed",),
    ("test_multi_eval", "test_two_clients_stream_at_once_to_one_edge_without_losing_a_request"):
        ("testbed", "tvm", "runtime", "cli"),
    **{("test_hyps", t): ("tvm",) for t in (
        "test_a_sequential_plan_survives_its_plan_file", "test_bad_segments_are_refused_by_name",
        "test_the_h_part_count_is_priced_in_the_objective")},
    ("test_hyps", "test_plan_cli_runs_a_device_larger_model_sequentially_and_saves_a_buildable_plan"):
        ("cli", "tvm"),
    **{("test_hyps", t): ("tvm", "runtime") for t in (
        "test_a_sequential_stage_equals_onnxruntime_alone_and_batched",
        "test_the_native_worker_refuses_a_sequential_bundle")},
    **{("test_hyps", t): ("tvm", "runtime", "testbed", "slow") for t in (
        "test_full_vgg16_runs_on_one_worker_under_1_gib_in_sequential_mode",
        "test_full_vgg16_on_two_capped_workers_with_fc1_h_parts_in_parallel")},
    ("test_cli", "test_run_with_check_and_input_file"): ("cli", "tvm", "runtime"),
    ("test_check_cli", "test_run_check_reports_the_output_tensor"): ("cli", "tvm", "runtime"),
    ("test_folding", "test_ppocrv4_rec_builds_and_checks_at_every_width"): ("tvm", "slow"),
    **{("test_partition", t): ("tvm",) for t in (
        "test_cut_bytes_match_the_graph_cuts", "test_evaluate_prices_a_split_by_hand",
        "test_a_senders_busy_time_counts_in_the_bottleneck_only_and_moves_the_throughput_plan",
        "test_slow_link_keeps_everything_on_the_end_device_and_fast_link_offloads",
        "test_bad_problems_name_the_culprit", "test_three_devices_on_a_path_and_memory_caps_force_splits",
        "test_energy_prefers_offloading_when_the_end_device_burns_power",
        "test_evaluation_candidates_are_both_single_sites_and_every_single_cut",
        "test_evaluation_prunes_only_hopeless_alternatives",
        "test_evaluation_with_a_failed_candidate_ranks_it_last_and_writes_plain_json",
        "test_several_end_devices_share_one_edge",
        "test_plan_partition_takes_overheads_by_device_name")},
    ("test_partition", "test_hyps_splits_an_oversized_fc_and_the_pipeline_equals_the_unsplit_model"):
        ("tvm", "runtime"),
    ("test_plan_cli", "test_parse_bytes"): ("unit",),
    ("test_links", "test_every_link_option_documents_what_a_hop_charges"): ("cli", "unit"),
    ("test_readme_commands", "test_testbed_up_4g_status_down"): ("cli", "testbed"),
    **{("test_recurrent", t): ("unit",) for t in (
        "test_expansion_equals_onnxruntime", "test_expansion_options_equal_onnxruntime",
        "test_batch_first_layout_equals_the_onnx_reference",
        "test_what_cannot_be_expanded_is_named")},
    ("test_fuzz", "test_the_decoders_raise_only_their_own_errors"): ("unit",),
    **{("test_fallback", t): ("tvm", "runtime") for t in (
        "test_the_pipeline_equals_onnxruntime_on_the_whole_model",
        "test_the_native_worker_refuses_a_fallback_bundle_by_name",
        "test_a_fallback_stage_is_deployed_to_a_device_that_holds_only_the_manifest")},
    **{("test_fallback", t): ("cli", "tvm") for t in (
        "test_cli_inspect_refuses_without_the_flag_and_marks_the_fallback_layers",
        "test_cli_build_check_with_the_fallback",
        "test_cli_plan_names_the_stage_that_falls_back")},
    ("test_fallback", "test_silero_vad_with_a_data_dependent_if_runs_with_the_fallback"):
        ("tvm", "runtime"),
    **{("test_control", t): ("tvm", "runtime") for t in (
        "test_a_live_worker_answers_every_golden_request",
        "test_an_oversized_control_frame_drops_the_peer_not_the_worker")},
    ("test_control", "test_client_reports_no_address_and_no_answer_without_raising"): ("runtime",),
    **{("test_launch", t): ("unit",) for t in (
        "test_argv_and_from_argv_are_inverse", "test_bad_worker_options_exit_with_usage",
        "test_replace_names_unknown_fields", "test_worker_env_uses_the_runtime_only_library",
        "test_worker_help_in_process_leaves_this_process_env_alone")},
    ("test_launch", "test_the_cli_and_python_m_share_one_parser"): ("cli", "runtime"),
    **{("test_predict", t): ("unit",) for t in (
        "test_sweep_is_seeded_and_checks_its_arguments", "test_live_state_round_trips_and_degrades_to_unknown",
        "test_metrics")},
    ("test_profile_link", "test_unreachable_rpc_device_is_a_clear_error"): ("rpc", "tvm"),
    ("test_profile_link", "test_link_monitor_measures_a_tbf_shaped_link_between_namespaces"): ("testbed",),
    ("test_secure", "test_generate_keys_permissions_and_no_overwrite"): ("unit",),
    **{("test_testbed", t): ("unit",) for t in (
        "test_profiles_and_expected_times", "test_layout_names_and_private_addresses")},
    ("test_testbed", "test_link_emulator_delays_each_direction_and_drops"): ("runtime",),
    ("test_tflite", "test_cli_build_check_names_the_tflite_reference"): ("cli", "tvm"),
    ("test_testbed", "test_cli_help"): ("cli",),
    ("test_testbed", "test_cli_up_status_down"): ("cli", "testbed"),
    ("test_testbed", "test_tvm_rpc_to_the_qemu_device"): ("testbed", "tvm", "rpc"),
    ("test_testbed", "test_metaschedule_tuning_over_rpc_on_the_qemu_device"): ("testbed", "tvm", "rpc"),
    ("test_tune", "test_tune_over_an_rpc_tracker_then_build_applies_the_records"): ("cli", "tvm", "rpc", "slow"),
    ("test_tune", "test_tune_directly_on_an_rpc_server_resumes_and_builds_match_onnxruntime"):
        ("tvm", "rpc", "slow"),
    ("test_tune", "test_a_database_of_another_target_is_refused_with_one_line"): ("cli", "tvm", "slow"),
    ("test_tune", "test_retime_replaces_noisy_records_with_medians_and_keeps_every_record"):
        ("cli", "tvm", "slow"),
    ("test_tune", "test_unreachable_tracker_wrong_key_and_bad_options_are_one_line_each"):
        ("cli", "tvm", "rpc", "slow"),
    ("test_wire", "test_zmq_round_trip_and_error_reply"): ("runtime",),
    ("test_zoo", "test_vgg16_full_size_graph_only"): ("slow",),  # 550 MB of weights, ~15 s
}

# Fixture -> the tiers every test using it needs (added to the table's).
FIXTURE_TIERS: dict[str, tuple[str, ...]] = {
    "rpc_server": ("rpc", "tvm"),   # test_profile_link: tvm.exec.rpc_server on loopback
    "testbed": ("testbed",),        # test_testbed: namespaces + qemu
}


def pytest_configure(config: pytest.Config) -> None:
    registered = {line.split(":")[0].strip() for line in config.getini("markers")}
    missing = [t for t in TIER_MARKERS if t not in registered]
    if missing:
        raise pytest.UsageError(f"tiers {', '.join(missing)} are not registered in pyproject.toml")


def _test_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    return {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    problems: list[str] = []
    seen: dict[str, Path] = {}
    for item in items:
        module = item.path.stem
        seen[module] = item.path
        if module not in TIERS:
            continue
        name = getattr(item, "originalname", item.name)
        tiers = set(OVERRIDES.get((module, name), TIERS[module]))
        for fixture in getattr(item, "fixturenames", ()):
            tiers.update(FIXTURE_TIERS.get(fixture, ()))
        if "unit" in tiers and tiers & _HEAVY:
            problems.append(f"{item.nodeid} is unit and {', '.join(sorted(tiers & _HEAVY))}: "
                            "fix its row in tests/conftest.py")
        for tier in sorted(tiers):
            item.add_marker(tier)
    for module, path in sorted(seen.items()):
        if module not in TIERS:
            problems.append(f"{path.name} has no tiers: add it to TIERS in tests/conftest.py "
                            f"(tiers: {', '.join(TIER_MARKERS)})")
    for module, name in sorted(OVERRIDES):
        if module in seen and name not in _test_functions(seen[module]):
            problems.append(f"OVERRIDES names {module}::{name}, which does not exist")
    if problems:
        raise pytest.UsageError("test tiers:\n  " + "\n  ".join(problems))


# ---- the unit tier's check ------------------------------------------------------------------------
_TVM_AT_COLLECTION: list[str] = []


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if "tvm" in sys.modules and not _TVM_AT_COLLECTION:
        _TVM_AT_COLLECTION.append(report.nodeid or "<session>")


def _refuse(what: str):
    def refused(*args, **kwargs):
        raise RuntimeError(f"a unit test must not {what}; give the test its tier in tests/conftest.py")
    return refused


@pytest.fixture(autouse=True)
def _unit_tier_guard(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    """Unit tests get no subprocesses and no connected/bound sockets (socketpair() still works)."""
    if request.node.get_closest_marker("unit") is None:
        yield
        return
    monkeypatch.setattr(subprocess.Popen, "__init__", _refuse("start a subprocess"))
    for method in ("bind", "connect", "connect_ex"):
        monkeypatch.setattr(socket.socket, method, _refuse(f"{method} a socket"))
    yield


_TVM_BEFORE = pytest.StashKey[bool]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem):
    item.stash[_TVM_BEFORE] = "tvm" in sys.modules
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    """A unit test during whose setup, call or teardown tvm got imported fails (once)."""
    outcome = yield
    report = outcome.get_result()
    if (item.get_closest_marker("unit") is not None and not item.stash.get(_TVM_BEFORE, True)
            and "tvm" in sys.modules and report.passed):
        item.stash[_TVM_BEFORE] = True
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid} is a unit test but imported tvm ({call.when}): give it "
                           "the tvm tier in tests/conftest.py, or keep TVM out of the code it runs")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    items = getattr(session, "items", [])
    if items and all(i.get_closest_marker("unit") for i in items) and "tvm" in sys.modules:
        where = (f"while collecting {_TVM_AT_COLLECTION[0]}" if _TVM_AT_COLLECTION
                 else "by a test")
        sys.stderr.write(f"\nunit tier: tvm was imported {where}; unit runs must not import TVM\n")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True)
def _isolated_build_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TVMSPLIT_CACHE", str(tmp_path_factory.getbasetemp() / "build-cache"))
