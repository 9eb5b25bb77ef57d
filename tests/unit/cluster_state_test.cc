// The coordinator's state, part by part: the operation table and its journal records, the
// instance table, membership's judgement of links, and the one mapping to the wire types.
// (The flows that combine them run against real daemons in the integration tests.)
#include <gtest/gtest.h>

#include <thread>

#include <nlohmann/json.hpp>

#include "instance_table.h"
#include "membership.h"
#include "operation_table.h"
#include "wire.h"

namespace modelcast::coordinator {
namespace {

using nlohmann::json;

OperationTable::ReplayContext Context() {
  return {[](const std::string& model) -> std::optional<int32_t> {
            if (model != "m") return std::nullopt;
            return 8;
          },
          [](const std::string& node) { return node.rfind("n", 0) == 0; }};
}

TEST(OperationTableTest, OperationsAreNamedRunningAndReplayedFromTheirRecords) {
  OperationTable t;
  Operation a;
  a.sources = {"n0"};
  a.targets = {"n1", "n2"};
  a.channel = t.NextChannel();
  t.Start(a, 3, OperationKind::kScaleOut, "m", 2);
  EXPECT_EQ(a.status.id, "op-3-1");
  EXPECT_TRUE(a.running());
  a.AddNode("n0", NodeRole::kSource, 8);
  a.AddNode("n1", NodeRole::kTarget, 8);
  a.AddNode("n2", NodeRole::kTarget, 8);
  EXPECT_EQ(a.progress("n1").slices_total, 8);
  EXPECT_EQ(a.progress("n0").slices_total, 0);
  std::vector<json> journal = {OperationTable::StartRecord(a)};
  // A replan that loses n2 for a stand-in n3, then the end.
  a.attempt = 1;
  a.status.replans = 1;
  a.lost.insert("n2");
  a.progress("n2").state = NodeState::kLost;
  a.targets.push_back("n3");
  journal.push_back(OperationTable::ReplanRecord(a));
  Operation& added = t.Add(a);
  t.Finish(added, OperationState::kFailed, "1 of 2 replicas loaded");
  journal.push_back(OperationTable::FinishRecord(added, {"n1"}));
  EXPECT_EQ(t.totals().finished, 1u);
  EXPECT_EQ(t.totals().errors, 1u);

  // The records replay to the same operation; so does a snapshot of the table.
  for (const auto& records : {journal, [&] {
                                std::vector<json> s;
                                t.Snapshot(s);
                                return s;
                              }()}) {
    OperationTable r;
    for (const auto& rec : records) {
      auto replayed = r.Replay(rec, Context());
      ASSERT_TRUE(replayed.ok()) << replayed.status().message();
      EXPECT_TRUE(*replayed);
    }
    const Operation* o = r.Find("op-3-1");
    ASSERT_NE(o, nullptr);
    EXPECT_EQ(o->status.kind, OperationKind::kScaleOut);
    EXPECT_EQ(o->status.state, OperationState::kFailed);
    EXPECT_EQ(o->status.error.value_or(""), "1 of 2 replicas loaded");
    EXPECT_EQ(o->status.replans, 1);
    EXPECT_EQ(o->targets, (std::vector<std::string>{"n1", "n2", "n3"}));
    EXPECT_EQ(o->progress("n2").state, NodeState::kLost);
    EXPECT_EQ(o->progress("n3").role, NodeRole::kTarget);
    EXPECT_EQ(o->progress("n0").role, NodeRole::kSource);
    EXPECT_EQ(o->FragmentId(), "op-3-1.r1");
  }
}

TEST(OperationTableTest, BadRecordsAreRefusedNamingWhatIsWrong) {
  OperationTable t;
  auto st = t.Replay({{"op", "operation"}, {"id", "op-1-1"}, {"model", "other"}, {"replicas", 1},
                      {"created", 1.0}, {"targets", {"n1"}}},
                     Context());
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.status().message().find("unknown model other"), std::string::npos);
  st = t.Replay({{"op", "operation"}, {"id", "op-1-1"}, {"model", "m"}, {"replicas", 1},
                 {"created", 1.0}, {"targets", {"x1"}}},
                Context());
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.status().message().find("unknown node x1"), std::string::npos);
  ASSERT_TRUE(t.Replay({{"op", "operation"}, {"id", "op-1-1"}, {"model", "m"}, {"replicas", 1},
                        {"created", 1.0}, {"targets", {"n1"}}},
                       Context())
                  .ok());
  st = t.Replay({{"op", "finish"}, {"id", "op-1-1"}, {"state", 9}, {"error", ""}, {"finished", 2.0}}, Context());
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.status().message().find("unknown state 9"), std::string::npos);
  st = t.Replay({{"op", "finish"}, {"id", "op-1-2"}, {"state", 3}, {"error", ""}, {"finished", 2.0}}, Context());
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.status().message().find("unknown operation"), std::string::npos);
  auto other = t.Replay({{"op", "instance"}}, Context());
  ASSERT_TRUE(other.ok());
  EXPECT_FALSE(*other);  // not an operation's record
}

TEST(OperationTableTest, KeepsTheNewestFinishedAndFindsRepeatedRequests) {
  OperationTable t;
  for (size_t i = 0; i < OperationTable::kKept + 5; ++i) {
    Operation op;
    t.Start(op, 1, OperationKind::kScaleIn, "m", 1);
    if (i == 0) op.request_id = "key";
    Operation& o = t.Add(std::move(op));
    t.Finish(o, OperationState::kSucceeded, "");
  }
  EXPECT_LE(t.all().size(), OperationTable::kKept + 1);
  EXPECT_EQ(t.Find("op-1-1"), nullptr);  // the oldest went
  EXPECT_NE(t.Find("op-1-" + std::to_string(OperationTable::kKept + 5)), nullptr);

  Operation op;
  t.Start(op, 1, OperationKind::kScaleOut, "m", 1);
  op.request_id = "again";
  const std::string id = t.Add(std::move(op)).status.id;
  auto same = t.Repeated("again", OperationKind::kScaleOut, "m", "scaleOut");
  ASSERT_TRUE(same.ok());
  ASSERT_NE(*same, nullptr);
  EXPECT_EQ((*same)->status.id, id);
  auto clash = t.Repeated("again", OperationKind::kScaleIn, "m", "scaleIn");
  ASSERT_FALSE(clash.ok());
  EXPECT_NE(clash.status().message().find("already named " + id + " (a scale-out of 'm')"), std::string::npos);
  auto none = t.Repeated("", OperationKind::kScaleOut, "m", "scaleOut");
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(*none, nullptr);
  EXPECT_EQ(t.RunningFor("m")->status.id, id);
}

TEST(OperationTableTest, ChannelsOfRunningOperationsAreNotHandedOut) {
  OperationTable t;
  std::set<int> seen;
  for (int i = 0; i < 255; ++i) {
    Operation op;
    op.channel = t.NextChannel();
    ASSERT_GE(op.channel, 1);
    ASSERT_LE(op.channel, 255);
    EXPECT_TRUE(seen.insert(op.channel).second) << "channel " << op.channel << " handed out twice";
    t.Start(op, 1, OperationKind::kScaleOut, "m" + std::to_string(i), 1);
    t.Add(std::move(op));
  }
  EXPECT_EQ(t.NextChannel(), 0);  // every channel busy
  Operation& first = *t.Find("op-1-1");
  t.Finish(first, OperationState::kSucceeded, "");
  EXPECT_EQ(t.NextChannel(), first.channel);
}

TEST(OperationTableTest, TheBestLinkOfEachNodeIsTheLowerOfWhatItsEndsMeasured) {
  Operation op;
  op.AddNode("a", NodeRole::kSource, 4);
  op.AddNode("b", NodeRole::kTarget, 4);
  const uint64_t big = Operation::kMinLinkSample;
  op.links[{"a", "b"}] = {{{big, 1.0}, {big, 2.0}}};  // the receiver saw it slower
  op.links[{"a", "c"}] = {{{1, 0.001}, {0, 0}}};      // too little to say anything
  auto best = op.BestLinks();
  EXPECT_DOUBLE_EQ(best.at("a"), static_cast<double>(big) / 2.0);
  EXPECT_DOUBLE_EQ(best.at("b"), static_cast<double>(big) / 2.0);
  EXPECT_FALSE(best.count("c"));
  EXPECT_DOUBLE_EQ(op.progress("b").link_bytes_per_s.value_or(0), static_cast<double>(big) / 2.0);
}

TEST(InstanceTableTest, ChangesWakeTheWatcherAndPipelinesComeAndGo) {
  int changes = 0;
  InstanceTable t([&] { changes++; });
  t.Set("m", "n1", InstanceState::kLoading);
  t.Set("m", "n1", InstanceState::kLoading);  // no change
  t.Set("m", "n2", InstanceState::kLocal);
  EXPECT_EQ(changes, 2);
  EXPECT_TRUE(t.SetPipeline("m", {"n1", "n2"}, "m/p1"));
  auto list = t.List("m");
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0].state, InstanceState::kPipeline);
  EXPECT_EQ(list[0].pipeline_id.value_or(""), "m/p1");
  EXPECT_EQ(list[1].state, InstanceState::kLocal);  // a full copy stays one
  EXPECT_TRUE(t.SetPipeline("m", {"n1"}, ""));
  EXPECT_EQ(t.List("m")[0].state, InstanceState::kLoading);
  EXPECT_FALSE(t.List("m")[0].pipeline_id.has_value());
  EXPECT_FALSE(t.SetPipeline("other", {"n1"}, "x"));
  t.Remove("m", "n1");
  t.Remove("m", "n2");
  EXPECT_EQ(t.Of("m"), nullptr);
  EXPECT_EQ(changes, 4);
}

TEST(InstanceTableTest, ItsRecordsReplayAndBadOnesAreRefused) {
  InstanceTable t([] {});
  t.Set("m", "n1", InstanceState::kLocal);
  t.Set("m", "n2", InstanceState::kDraining);
  std::vector<json> records;
  t.Snapshot(records);
  InstanceTable r([] {});
  for (const auto& rec : records) ASSERT_TRUE(*r.Replay(rec));
  ASSERT_TRUE(*r.Replay({{"op", "instance_removed"}, {"model", "m"}, {"node", "n2"}}));
  auto list = r.List("m");
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0].node, "n1");
  EXPECT_EQ(list[0].state, InstanceState::kLocal);
  auto bad = r.Replay({{"op", "instance"}, {"model", "m"}, {"node", "n3"}, {"state", 0}, {"since", 1.0}});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("unknown state 0"), std::string::npos);
  EXPECT_FALSE(*r.Replay({{"op", "finish"}}));
}

planner::ClusterConfig Cluster(int n) {
  planner::ClusterConfig c;
  c.name = "box";
  for (int i = 0; i < n; ++i) {
    planner::NodeConfig node;
    node.name = "n" + std::to_string(i);
    node.nic = 1e9;
    c.nodes.push_back(node);
  }
  return c;
}

TEST(MembershipTest, NodesJoinHeartbeatAndStragglersAreJudgedAgainstTheMedian) {
  Membership m(Cluster(4), 5.0);
  auto st = m.Join({"x", "127.0.0.1:1", "", std::nullopt, {}});
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("node 'x' is not in cluster 'box' (4 nodes in its config)"), std::string::npos);
  EXPECT_FALSE(m.Join({"n0", "", "", std::nullopt, {}}).ok());
  ASSERT_TRUE(m.Join({"n0", "127.0.0.1:1", "127.0.0.1:2", std::nullopt, {}}).ok());
  EXPECT_TRUE(m.Alive("n0"));
  EXPECT_FALSE(m.Alive("n1"));
  EXPECT_EQ(m.at("n0").serving_address, "127.0.0.1:2");  // the fabric address by default
  EXPECT_FALSE(*m.Heartbeat({"n0", 2, std::nullopt}, 1));  // another epoch's: rejoin
  EXPECT_TRUE(*m.Heartbeat({"n0", 1, std::nullopt}, 1));
  EXPECT_FALSE(m.Heartbeat({"x", 1, std::nullopt}, 1).ok());

  // n3 carried a tenth of what the others did: planned at that until measured back.
  m.JudgeLinks("op-1-1", {{"n0", 9e8}, {"n1", 8e8}, {"n2", 9e8}, {"n3", 9e7}});
  EXPECT_NEAR(m.Nic("n3"), 1e9 * 0.09 / 0.9, 1);
  EXPECT_DOUBLE_EQ(m.Nic("n0"), 1e9);
  EXPECT_TRUE(m.Report("n3").measured_nic.has_value());
  m.JudgeLinks("op-1-2", {{"n0", 9e8}, {"n1", 8e8}, {"n3", 9e8}});
  EXPECT_DOUBLE_EQ(m.Nic("n3"), 1e9);
  // Two nodes are no majority: nothing is judged.
  m.JudgeLinks("op-1-3", {{"n0", 9e8}, {"n3", 1e6}});
  EXPECT_DOUBLE_EQ(m.Nic("n3"), 1e9);
}

// A coordinator that could not hear (its journal write waited on etcd with the state's lock
// held) does not blame the nodes for it: only the time it could hear counts against the
// deadline, and only the deaf time since a node was last heard counts for that node.
TEST(MembershipTest, TimeTheCoordinatorCouldNotHearIsNotHeldAgainstANode) {
  // The deaf time is measured from the clock, not assumed from the sleeps: a sleep that
  // oversleeps under load only makes a silent node more silent.
  using namespace std::chrono_literals;
  using Clock = std::chrono::steady_clock;
  Membership m(Cluster(2), 1.0);
  const auto t0 = Clock::now();
  ASSERT_TRUE(m.Join({"n0", "127.0.0.1:1", "", std::nullopt, {}}).ok());
  std::this_thread::sleep_for(1200ms);
  EXPECT_FALSE(m.Alive("n0")) << "silent past the deadline";
  m.Deaf(Clock::now() - t0 - 100ms);
  EXPECT_TRUE(m.Alive("n0")) << "heard for about 0.1 s of its silence";
  ASSERT_TRUE(m.Join({"n1", "127.0.0.1:2", "", std::nullopt, {}}).ok());
  EXPECT_TRUE(m.Alive("n0"));
  EXPECT_TRUE(m.Alive("n1"));
  std::this_thread::sleep_for(1200ms);
  EXPECT_FALSE(m.Alive("n0")) << "heard for 1.3 s without a word";
  EXPECT_FALSE(m.Alive("n1")) << "the deaf time before it joined is not its";
}

TEST(CoordinatorWireTest, NamesAndOptionalFieldsCrossTheMappingIntact) {
  EXPECT_EQ(NameOf(NodeState::kLost), "LOST");
  EXPECT_EQ(InSentence(NodeState::kLost), "lost");
  EXPECT_EQ(NameOf(OperationState::kSucceeded), "SUCCEEDED");
  EXPECT_EQ(NameOf(OperationKind::kScaleIn), "SCALE_IN");

  OperationStatus s;
  s.id = "op-1-1";
  s.kind = OperationKind::kScaleIn;
  s.state = OperationState::kFailed;
  s.error = "why";
  NodeProgress p;
  p.node = "n1";
  p.role = NodeRole::kRelease;
  p.state = NodeState::kReleased;
  s.nodes.push_back(p);
  const rpc::OperationStatus w = ToWire(s);
  EXPECT_EQ(w.kind, rpc::OperationKind::SCALE_IN);
  EXPECT_EQ(w.state, rpc::OperationState::FAILED);
  EXPECT_TRUE(w.__isset.error);
  EXPECT_FALSE(w.__isset.finished_unix);
  EXPECT_FALSE(w.__isset.first_pipeline_s);
  ASSERT_EQ(w.nodes.size(), 1u);
  EXPECT_EQ(w.nodes[0].role, rpc::NodeRole::RELEASE);
  EXPECT_EQ(w.nodes[0].state, rpc::NodeState::RELEASED);
  EXPECT_FALSE(w.nodes[0].__isset.error);

  rpc::ProgressReport r;
  r.node = "n1";
  r.operation_id = "op-1-1.r2";
  r.done = true;
  r.__set_error("peer gone");
  r.__set_failure(rpc::FragmentFailure::STORE);
  rpc::LinkSample l;
  l.peer = "n2";
  l.bytes = 10;
  l.busy_s = 0.5;
  r.__set_sent_to({l});
  const ProgressUpdate u = FromWire(r);
  EXPECT_TRUE(u.store_failure);
  EXPECT_EQ(u.error.value_or(""), "peer gone");
  EXPECT_FALSE(u.started_unix.has_value());
  ASSERT_EQ(u.sent_to.size(), 1u);
  EXPECT_EQ(u.sent_to[0].peer, "n2");
  EXPECT_TRUE(u.received_from.empty());

  rpc::ScaleOutRequest so;
  so.model = "m";
  so.replicas = 2;
  EXPECT_EQ(FromWire(so).algorithm, "lambdapipe");
  EXPECT_EQ(FromWire(so).deadline, 600);
  so.options.__set_dry_run(true);
  so.options.__set_targets({"n1"});
  so.__isset.options = true;
  so.header.__set_request_id("k");
  const ScaleOutArgs a = FromWire(so);
  EXPECT_TRUE(a.dry_run);
  EXPECT_EQ(a.allowed_targets, std::vector<std::string>{"n1"});
  EXPECT_EQ(a.request_id, "k");
}

}  // namespace
}  // namespace modelcast::coordinator
