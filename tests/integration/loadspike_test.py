#!/usr/bin/python3
"""The load-spike benchmark's parts: the workloads read from the shared traces, the autoscaler
policy, the GPU-time integral, and the simulator runner end to end against the real
modelcast-sim. Usage: loadspike_test.py MODELCAST_SIM. Exits 77 (skipped) without the traces."""
import math
import os
import sys
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench", "loadspike"))
import cost  # noqa: E402
import policy  # noqa: E402
import report  # noqa: E402
import sim  # noqa: E402
import workload  # noqa: E402
from modes import ALGORITHM  # noqa: E402

SIM_BIN = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "build", "bin", "modelcast-sim")


class WorkloadTest(unittest.TestCase):
    def test_traces_are_read_with_their_units(self):
        az = workload.load_azure()
        self.assertEqual(len(az), 19366)
        self.assertAlmostEqual(az[-1][0], 3501.7, delta=0.5)  # seconds, from the first request
        self.assertEqual(az[0][1:], (374, 44))
        mc = workload.load_mooncake()
        self.assertEqual(len(mc), 12031)
        self.assertAlmostEqual(mc[-1][0], 3537.0, delta=1.0)  # milliseconds in the file
        sg = workload.load_servegen("deepseek-r1", 33000 - 600, 33000 + 600, seed=3)
        # The README's step: 2.25x from the window before 33,000 s to the one after.
        before = sum(1 for r in sg if r[0] < 600)
        after = len(sg) - before
        self.assertGreater(after / before, 1.6)

    def test_a_window_is_compressed_and_thinned_to_the_rate(self):
        reqs, source = workload.build("azure", 100, 3.0, 64, 16, 32, 16, seed=2)
        self.assertAlmostEqual(len(reqs) / 100, 3.0, delta=0.45)
        self.assertTrue(all(0 <= r.t < 100 and 1 <= r.prompt <= 64 and 1 <= r.output <= 16 for r in reqs))
        self.assertEqual([r.t for r in reqs], sorted(r.t for r in reqs))
        self.assertIn("compressed", source)
        step, _ = workload.build("step", 100, 2.0, 4096, 1024, seed=2)
        inside = sum(1 for r in step if 30 <= r.t < 70) / 40
        outside = sum(1 for r in step if r.t < 30 or r.t >= 70) / 60
        self.assertGreater(inside / outside, 3.5)

    def test_bad_specs_are_named(self):
        with self.assertRaisesRegex(workload.WorkloadError, "unknown workload 'azur'"):
            workload.build("azur", 10, 1, 10, 10)
        with self.assertRaisesRegex(workload.WorkloadError, "unknown model 'm-huge'"):
            workload.build("servegen:m-huge", 10, 1, 10, 10)
        with self.assertRaisesRegex(workload.WorkloadError, "must be more than 0"):
            workload.build("step", 10, 0, 10, 10)


class PolicyTest(unittest.TestCase):
    def test_scales_out_at_once_and_in_only_after_the_keep_alive(self):
        a = policy.Autoscaler(min_replicas=2, max_replicas=8, per_replica=4, service_s=1, keep_alive=10)
        self.assertEqual(a.decide(0, outstanding=8, held=2, busy=False), 0)
        self.assertEqual(a.decide(1, outstanding=20, held=2, busy=True), 0)  # one operation at a time
        self.assertEqual(a.decide(2, outstanding=20, held=2, busy=False), 3)
        self.assertEqual(a.decide(3, outstanding=100, held=5, busy=False), 3)  # capped at max
        self.assertEqual(a.decide(4, outstanding=0, held=8, busy=False), 0)  # low since 4
        self.assertEqual(a.decide(13, outstanding=0, held=8, busy=False), 0)
        self.assertEqual(a.decide(14, outstanding=0, held=8, busy=False), -6)  # never below min
        with self.assertRaises(ValueError):
            policy.Autoscaler(min_replicas=3, max_replicas=2, per_replica=1, service_s=1, keep_alive=0)

    def test_the_arrival_rate_counts_the_last_window(self):
        a = policy.Autoscaler(min_replicas=1, max_replicas=100, per_replica=1, service_s=2, keep_alive=0, window=2)
        for i in range(40):
            a.arrived(i * 0.1)  # 10 req/s for 4 s
        self.assertAlmostEqual(a.rate(4.0), 10, delta=0.6)
        self.assertEqual(a.want(4.0, outstanding=0), 20)


class ReportTest(unittest.TestCase):
    def test_gpu_time_integrates_what_is_held(self):
        tl = [(0, 0, 0, 2, 2), (10, 3, 0, 2, 5), (15, 0, 1, 5, 5), (30, 0, 0, 2, 2)]
        self.assertAlmostEqual(report.gpu_seconds(tl, 40), 2 * 10 + 5 * 5 + 5 * 15 + 2 * 10)
        self.assertAlmostEqual(report.percentile([1, 2, 3, 4], 0.5), 2.5)
        self.assertTrue(math.isnan(report.percentile([], 0.9)))


class SimulatorTest(unittest.TestCase):
    def test_every_mode_on_the_testbed(self):
        model = sim.ScaleOutModel(SIM_BIN, os.path.join(ROOT, "cluster-configs", "lambdascale-testbed.yaml"),
                                  "llama-2-70b", 16)
        rps = sim.capacity_rps(model, 1000, 200)
        reqs, _ = workload.build("burst", 120, 1.5 * rps, 4096, 1024, seed=5)
        scaler = {"min_replicas": 2, "max_replicas": 12, "per_replica": 16 * 0.8, "service_s": 2.0, "keep_alive": 20}
        out = {m: report.summarize(sim.simulate(m, reqs, 120, 12, 2, scaler, model)) for m in ALGORITHM}
        for m, s in out.items():
            self.assertEqual(s["failed"], 0, m)
            self.assertEqual(s["requests"], len(reqs), m)
        # Every node warm is the floor of TTFT and the ceiling of cost; a 128 GiB model from SSD
        # at 6 GB/s (local) is slower to come than over 400 Gbit/s.
        for m in ALGORITHM:
            self.assertLessEqual(out["ideal"]["ttft_p90"], out[m]["ttft_p90"] + 1e-9, m)
            self.assertGreaterEqual(out["ideal"]["gpu_s"], out[m]["gpu_s"] - 1e-6, m)
        self.assertLess(out["modelcast"]["ttft_p99"], out["local"]["ttft_p99"])
        self.assertGreater(out["modelcast"]["scale_outs"], 0)

    def test_a_bad_model_is_named(self):
        model = sim.ScaleOutModel(SIM_BIN, os.path.join(ROOT, "cluster-configs", "lambdascale-testbed.yaml"),
                                  "no-such-model", 16)
        with self.assertRaisesRegex(sim.SimError, "no-such-model"):
            model.run("lambdapipe", 2, 1)


class CostTest(unittest.TestCase):
    """loadspike.py cost: the cheapest policy that holds an SLO, per mode."""

    @staticmethod
    def ev(gpu_s, p90, failed=0, warm=1, keep=0, util=1.0):
        return {"policy": {"warm": warm, "keep": keep, "util": util}, "ttft_p90": p90, "failed": failed,
                "gpu_s": gpu_s, "peak_gpus": 2, "scale_outs": 1}

    def test_the_cheapest_policy_that_holds_the_slo(self):
        evals = [self.ev(100, 3.0), self.ev(200, 0.9, warm=2), self.ev(150, 0.8, failed=1), self.ev(200, 0.5, warm=3),
                 self.ev(300, 0.2, warm=4), self.ev(90, float("nan"))]
        self.assertEqual(cost.cheapest(evals, 5)["gpu_s"], 100)
        self.assertEqual(cost.cheapest(evals, 1)["policy"]["warm"], 2)  # the failed one is out; a tie: fewer warm
        self.assertEqual(cost.cheapest(evals, 0.3)["gpu_s"], 300)
        self.assertIsNone(cost.cheapest(evals, 0.1))
        table = cost.costs({"modelcast": evals, "local": [self.ev(400, 0.9)], "chain": [self.ev(250, 0.9)]}, [1, 0.1])
        self.assertAlmostEqual(table[0]["ratios"]["modelcast_over_local"], 0.5)
        self.assertAlmostEqual(table[0]["ratios"]["modelcast_over_chain"], 0.8)
        self.assertAlmostEqual(table[0]["ratios"]["modelcast_over_best_other_multicast"], 0.8)
        self.assertIsNone(table[1]["modes"]["modelcast"])
        self.assertEqual(table[1]["ratios"], {})
        self.assertIn("not held", cost.markdown(table, ["modelcast", "chain", "local"]))

    def test_slo_lists_are_checked(self):
        self.assertEqual(cost.slo_list("2,0.5,1"), [0.5, 1, 2])
        for bad in ("", "fast", "0,1", "-1", "inf"):
            with self.assertRaisesRegex(ValueError, "--slo"):
                cost.slo_list(bad)

    def test_a_search_on_the_testbed(self):
        """A burst on the testbed: each mode's chosen policy, simulated again, holds the SLO at the
        cost reported; modelcast's multicast pays no more than local loading."""
        model = sim.ScaleOutModel(SIM_BIN, os.path.join(ROOT, "cluster-configs", "lambdascale-testbed.yaml"),
                                  "llama-2-13b", 16)
        reqs, _ = workload.build("burst", 60, 12.0, 4096, 256, seed=4)
        base = model.run("lambdapipe", 1, 1)
        service = 500 / base["prefill_tokens_per_s"] + 128 * 16 / base["instance_tokens_per_s"]
        slots = base["instances_per_node"] * 16
        evals = cost.search(["modelcast", "local"], reqs, 60, 12, model, service, slots, [1, 2, 4], [0, 30], [0.7, 1.0])
        self.assertEqual(len(evals["modelcast"]), 12)
        table = cost.costs(evals, [1.0, 5.0])
        for row in table:
            for mode, chosen in row["modes"].items():
                if chosen is None:
                    continue
                again = cost.evaluate(mode, reqs, 60, 12, model, service, slots, chosen["policy"])
                self.assertEqual(again["failed"], 0)
                self.assertLessEqual(again["ttft_p90"], row["slo_s"])
                self.assertAlmostEqual(again["gpu_s"], chosen["gpu_s"])
            if row["modes"]["modelcast"] and row["modes"]["local"]:
                self.assertLessEqual(row["ratios"]["modelcast_over_local"], 1.0 + 1e-9)
        self.assertIsNotNone(table[-1]["modes"]["modelcast"])

    def test_the_box_search_bisects_to_the_smallest_warm_minimum_that_holds(self):
        """cost --box: each evaluation is a real run, so per (keep, util) and SLO the warm minimum
        is bisected; the runs are shared between SLOs and the cheapest holding one is chosen."""
        runs = []

        def fake(mode, policy):  # p90 TTFT falls as replicas are kept warm; keep-alive helps a little
            runs.append((mode, policy["warm"], policy["keep"]))
            p90 = 8.0 / policy["warm"] - (0.5 if policy["keep"] else 0)
            return self.ev(100 * policy["warm"] + policy["keep"], p90, warm=policy["warm"], keep=policy["keep"],
                           util=policy["util"])

        evals = cost.search_smallest_warm(["modelcast"], fake, [1, 2, 3, 4, 5, 6, 7], [0, 15], [0.75], [2.0, 1.2])
        # keep 0: holds 2 s from warm 4, 1.2 s from warm 7; keep 15: from warm 4 and 5.
        table = cost.costs(evals, [2.0, 1.2])
        self.assertEqual(table[0]["modes"]["modelcast"]["policy"], {"warm": 4, "keep": 0, "util": 0.75})
        self.assertEqual(table[1]["modes"]["modelcast"]["policy"], {"warm": 5, "keep": 15, "util": 0.75})
        self.assertEqual(len(runs), len(set(runs)))  # no policy run twice
        self.assertLess(len(runs), 2 * 7)  # fewer than every policy
        # A mode no warm minimum helps: one run per (keep, util), "not held".
        evals = cost.search_smallest_warm(["local"], lambda m, p: self.ev(1, 99.0, warm=p["warm"]), [1, 2, 3], [0],
                                          [1.0], [2.0])
        self.assertEqual(len(evals["local"]), 1)
        self.assertIsNone(cost.costs(evals, [2.0])[0]["modes"]["local"])


class CheckTest(unittest.TestCase):
    """loadspike.py check: its scale-out shapes, and the simulator's side of the comparison."""

    def test_shapes_are_parsed_and_bad_ones_named(self):
        import check
        self.assertEqual(check.parse_shapes("lambdapipe:1:6,chain:2:3", 8), [("lambdapipe", 1, 6), ("chain", 2, 3)])
        for bad, why in (("lambdapipe:1", "not algorithm:sources:targets"), ("x:1:2", "unknown algorithm"),
                         ("chain:0:2", "at least one source"), ("chain:2:6", "needs 8 workers; the box has 7"),
                         ("", "no scale-out"), ("chain:1:2:3", "not algorithm"), ("chain:a:2", "not algorithm")):
            with self.assertRaisesRegex(ValueError, why):
                check.parse_shapes(bad, 8)

    def test_predictions_for_operations_measured_in_a_box(self):
        """Two operations as the box reports them, compared with modelcast-sim on the box's YAML."""
        import tempfile
        import check
        with tempfile.TemporaryDirectory() as d:
            yaml = os.path.join(d, "box.yaml")
            with open(yaml, "w") as f:
                f.write(check.cluster_yaml(8, 25e6))
            rows = [{"algorithm": a, "sources": ["node-2"], "targets": ["node-%d" % i for i in range(3, 3 + n)],
                     "created_unix": 100.0, "first_byte_unix": 100.05, "last_landed_unix": 100.05 + t,
                     "finished_unix": 100.06 + t, "first_pipeline_blocks_s": None}
                    for a, n, t in (("lambdapipe", 3, 4.5), ("binary-tree", 6, 9.0))]
            over = check.predict(rows, "1GB", yaml, 4, SIM_BIN)
        self.assertAlmostEqual(over["dispatch_s"], 0.05, places=6)
        self.assertAlmostEqual(over["report_lag_s"], 0.01, places=6)
        for r in rows:
            self.assertGreater(r["sim_completion_s"], 0)
            self.assertAlmostEqual(r["transfer_over_sim"], r["transfer_s"] / r["sim_completion_s"])
            self.assertAlmostEqual(r["sim_operation_s"], 0.06 + r["sim_completion_s"])
        # A binary tree of 6 moves the model twice as deep as a pipeline: the simulator says so too.
        self.assertGreater(rows[1]["sim_completion_s"], 1.5 * rows[0]["sim_completion_s"])
        self.assertIn("| binary-tree | 1 | 6 |", check.table(rows))


if __name__ == "__main__":
    if not os.path.exists(os.path.join(workload.TRACES, workload.AZURE)):
        print("SKIPPED: the shared traces are not at %s (set MODELCAST_TRACES)" % workload.TRACES)
        sys.exit(77)
    unittest.main(argv=sys.argv[:1])
