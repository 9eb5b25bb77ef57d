#include "modelcast/sim/simulator.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <queue>

#include "modelcast/planner/pipelines.h"

namespace modelcast::sim {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

struct Event {
  double time;
  int kind;  // 0: link released, 1: slice arrives
  uint32_t transfer;
  bool operator>(const Event& o) const { return time != o.time ? time > o.time : kind > o.kind; }
};

class Replay {
 public:
  Replay(const Scenario& sc, const planner::Plan& plan, double overhead)
      : sc_(sc),
        plan_(plan),
        overhead_(overhead),
        nodes_(sc.request.nodes.size()),
        slices_(plan.num_slices),
        arrival_(nodes_, std::vector<double>(slices_, kInf)),
        send_list_(nodes_),
        recv_list_(nodes_),
        local_list_(nodes_),
        send_next_(nodes_, 0),
        recv_next_(nodes_, 0),
        local_next_(nodes_, 0),
        send_used_(nodes_, 0),
        recv_used_(nodes_, 0),
        local_used_(nodes_, 0),
        waiting_for_recv_(nodes_) {
    for (int32_t s : sc.request.sources) std::fill(arrival_[s].begin(), arrival_[s].end(), 0.0);
    for (uint32_t i = 0; i < plan.transfers.size(); ++i) {
      const auto& t = plan.transfers[i];
      if (t.local()) {
        local_list_[t.src].push_back(i);
      } else {
        send_list_[t.src].push_back(i);
        recv_list_[t.dst].push_back(i);
      }
    }
  }

  void Run() {
    for (size_t u = 0; u < nodes_; ++u) {
      Retry(static_cast<int32_t>(u), 0);
      TryLocal(static_cast<int32_t>(u), 0);
    }
    while (!events_.empty()) {
      const Event e = events_.top();
      events_.pop();
      const auto& t = plan_.transfers[e.transfer];
      if (e.kind == 0) {
        const double r = Rate(t);
        if (t.local()) {
          local_used_[t.src] -= r;
          TryLocal(t.src, e.time);
        } else {
          send_used_[t.src] -= r;
          recv_used_[t.dst] -= r;
          Retry(t.src, e.time);
          Retry(ReceiverWaiters(t.dst), e.time);
        }
      } else {
        arrival_[t.dst][t.slice] = std::min(arrival_[t.dst][t.slice], e.time);
        Retry(t.dst, e.time);
      }
    }
  }

  const std::vector<std::vector<double>>& arrival() const { return arrival_; }

 private:
  // A one-tick transfer owns its links and runs at their speed (a slice shorter than the
  // tick's largest finishes early); a longer one was planned to share them (a straggler's
  // feed beside other traffic) and runs at its planned rate.
  double Rate(const planner::Transfer& t) const {
    const auto& n = sc_.request.nodes;
    const double link = t.local() ? n[t.src].local_rate : std::min(n[t.src].nic, n[t.dst].nic);
    if (t.duration == 1) return link;
    const double planned =
        static_cast<double>(sc_.request.model.slice_bytes[t.slice]) / (t.duration * plan_.tick_seconds);
    return std::min(planned, link);
  }

  void Start(uint32_t id, double now) {
    const auto& t = plan_.transfers[id];
    const double r = Rate(t);
    const double busy = overhead_ + static_cast<double>(sc_.request.model.slice_bytes[t.slice]) / r;
    const double latency = t.local() ? 0 : sc_.cluster.nodes[t.dst].latency;
    events_.push({now + busy, 0, id});
    events_.push({now + busy + latency, 1, id});
  }

  std::vector<int32_t> ReceiverWaiters(int32_t v) {
    std::vector<int32_t> w;
    w.swap(waiting_for_recv_[v]);
    return w;
  }
  void Retry(int32_t u, double now) { Retry(std::vector<int32_t>{u}, now); }
  void Retry(std::vector<int32_t> work, double now) {
    while (!work.empty()) {
      const int32_t u = work.back();
      work.pop_back();
      TrySend(u, now, &work);
    }
  }

  // Starts u's sends in plan order. A send also waits for its turn at the receiver: each
  // node receives in plan order (the executor grants ready-to-receive credits in that
  // order), so a receiver freed early does not take a later round's slice and delay the
  // round it owes. Senders that become startable are pushed onto `work`.
  void TrySend(int32_t u, double now, std::vector<int32_t>* work) {
    auto& list = send_list_[u];
    const double cap = sc_.request.nodes[u].nic * (1 + 1e-6);
    while (send_next_[u] < list.size()) {
      const uint32_t id = list[send_next_[u]];
      const auto& t = plan_.transfers[id];
      if (arrival_[u][t.slice] > now) return;  // retried when the slice arrives
      const double r = Rate(t);
      if (send_used_[u] + r > cap) return;  // retried when a send ends
      const int32_t v = t.dst;
      if (recv_list_[v][recv_next_[v]] != id || recv_used_[v] + r > sc_.request.nodes[v].nic * (1 + 1e-6)) {
        waiting_for_recv_[v].push_back(u);  // retried when v's turn or room changes
        return;
      }
      send_used_[u] += r;
      recv_used_[v] += r;
      Start(id, now);
      ++send_next_[u];
      ++recv_next_[v];
      for (int32_t w : ReceiverWaiters(v)) work->push_back(w);
    }
  }

  void TryLocal(int32_t u, double now) {
    auto& list = local_list_[u];
    const double cap = sc_.request.nodes[u].local_rate * (1 + 1e-6);
    while (local_next_[u] < list.size()) {
      const uint32_t id = list[local_next_[u]];
      const double r = Rate(plan_.transfers[id]);
      if (local_used_[u] + r > cap) return;
      local_used_[u] += r;
      Start(id, now);
      ++local_next_[u];
    }
  }

  const Scenario& sc_;
  const planner::Plan& plan_;
  const double overhead_;
  const size_t nodes_;
  const uint32_t slices_;
  std::vector<std::vector<double>> arrival_;
  std::vector<std::vector<uint32_t>> send_list_, recv_list_, local_list_;
  std::vector<size_t> send_next_, recv_next_, local_next_;
  std::vector<double> send_used_, recv_used_, local_used_;
  std::vector<std::vector<int32_t>> waiting_for_recv_;
  std::priority_queue<Event, std::vector<Event>, std::greater<Event>> events_;
};

// Seconds for one decode step of `batch` tokens over a fraction `share` of the model on
// `gpus` GPUs of node `n`: the slower of reading the weights from HBM and the arithmetic
// (at half the peak rate).
double StepSeconds(const Scenario& sc, int64_t batch, double share, int64_t gpus) {
  const auto& n = sc.cluster.nodes.front();
  const double bytes = share * static_cast<double>(sc.model.bytes);
  const double flops = share * 2.0 * static_cast<double>(sc.model.config.ParameterCount()) * static_cast<double>(batch);
  return std::max(bytes / (gpus * n.gpu_hbm), flops / (gpus * n.gpu_tflops * 1e12 * 0.5));
}

}  // namespace

double InstanceTokensPerSecond(const Scenario& sc, int64_t batch) {
  return static_cast<double>(batch) / StepSeconds(sc, batch, 1.0, sc.gpus_per_instance);
}

double PrefillTokensPerSecond(const Scenario& sc) {
  return static_cast<double>(sc.gpus_per_instance) * sc.cluster.nodes.front().gpu_tflops * 1e12 * 0.5 /
         (2.0 * static_cast<double>(sc.model.config.ParameterCount()));
}

double PipelineTokensPerSecond(const Scenario& sc, const planner::Pipeline& p, int64_t batch, double overhead) {
  const double layers = sc.model.shape.TotalLayers();
  const double activation = static_cast<double>(batch) * static_cast<double>(sc.model.config.hidden_size) * 2.0;
  const auto& node = sc.cluster.nodes.front();
  double slowest = 0;
  for (const auto& st : p.stages) {
    double stage_layers = 0;
    for (uint32_t b = st.first_block; b < st.end_block; ++b) stage_layers += sc.model.shape.block_layers[b];
    // Micro-batches keep every stage busy; a stage's time is its compute plus handing the
    // activations to the next stage.
    const double hop = activation / node.nic + node.latency + overhead;
    slowest = std::max(slowest, StepSeconds(sc, batch, stage_layers / layers, sc.gpus_per_instance) + hop);
  }
  return slowest > 0 ? static_cast<double>(batch) / slowest : 0;
}

double SimResult::NewTokensBy(double t) const {
  double sum = 0, prev_t = 0, prev_c = base_capacity;
  for (const auto& p : capacity) {
    if (p.seconds >= t) break;
    sum += (prev_c - base_capacity) * (p.seconds - prev_t);
    prev_t = p.seconds;
    prev_c = p.tokens_per_s;
  }
  return sum + (prev_c - base_capacity) * (t - prev_t);
}

Result<SimResult> Simulate(const Scenario& sc, const planner::Plan& plan, const SimOptions& o) {
  const planner::PlanRequest& req = sc.request;
  if (plan.num_slices != req.model.num_slices() || plan.full_at.size() != req.nodes.size()) {
    return InvalidArgument("simulate: the plan is not for this scenario");
  }
  if (o.batch < 1) return InvalidArgument("simulate: batch must be at least 1");
  const double overhead = o.per_transfer_overhead >= 0 ? o.per_transfer_overhead : sc.cluster.per_transfer_overhead;
  Replay replay(sc, plan, overhead);
  replay.Run();
  const auto& arrival = replay.arrival();

  SimResult r;
  r.algorithm = plan.algorithm;
  r.transfers = plan.transfers.size();
  std::vector<double> nic;
  for (int32_t t : req.targets) nic.push_back(req.nodes[t].nic);
  std::nth_element(nic.begin(), nic.begin() + nic.size() / 2, nic.end());
  r.ideal = static_cast<double>(req.model.TotalBytes()) / nic[nic.size() / 2];

  const planner::ModelShape& m = req.model;
  const uint32_t blocks = m.num_blocks();
  const int64_t per_node = sc.cluster.nodes.front().gpus / sc.gpus_per_instance;
  const double instance = InstanceTokensPerSecond(sc, o.batch);
  r.base_capacity = static_cast<double>(req.sources.size() * per_node) * instance;

  // When each target completes each block, and becomes full.
  std::vector<std::vector<double>> block_done(req.nodes.size());
  std::vector<double> full(req.nodes.size(), kInf);
  double sum_full = 0;
  for (int32_t n : req.targets) {
    block_done[n].assign(blocks, 0);
    double f = 0;
    for (uint32_t b = 0; b < blocks; ++b) {
      for (uint32_t x = m.block_first_slice[b]; x < m.block_first_slice[b + 1]; ++x) {
        block_done[n][b] = std::max(block_done[n][b], arrival[n][x]);
      }
      f = std::max(f, block_done[n][b]);
    }
    if (!std::isfinite(f)) return Internal("simulate: target '" + req.nodes[n].name + "' never completes");
    full[n] = f;
    sum_full += f;
    r.completion = std::max(r.completion, f);
    r.first_full = r.first_full < 0 ? f : std::min(r.first_full, f);
  }
  r.mean_full = sum_full / static_cast<double>(req.targets.size());

  int max_stages =
      req.max_pipeline_stages > 0 ? req.max_pipeline_stages : std::max<int>(4, static_cast<int>(req.sources.size()));
  // Walk block completions and full instances in time order; pipelines are searched for only
  // while every block is held by some partial target.
  struct Change {
    double time;
    int32_t node;
    int32_t block;  // -1: the node becomes full
  };
  std::vector<Change> changes;
  for (int32_t n : req.targets) {
    for (uint32_t b = 0; b < blocks; ++b) changes.push_back({block_done[n][b], n, static_cast<int32_t>(b)});
    changes.push_back({full[n], n, -1});
  }
  std::sort(changes.begin(), changes.end(),
            [](const Change& a, const Change& b) { return a.time != b.time ? a.time < b.time : a.block > b.block; });
  std::vector<uint32_t> holders(blocks, 0);
  uint32_t uncovered = blocks;
  int64_t full_count = 0;
  std::vector<bool> is_full(req.nodes.size(), false);
  for (size_t i = 0; i < changes.size();) {
    const double t = changes[i].time;
    for (; i < changes.size() && changes[i].time == t; ++i) {
      const Change& c = changes[i];
      if (c.block >= 0) {
        if (holders[c.block]++ == 0) --uncovered;
      } else {
        is_full[c.node] = true;
        ++full_count;
        for (uint32_t b = 0; b < blocks; ++b) {
          if (--holders[b] == 0) ++uncovered;
        }
      }
    }
    CapacityPoint p{t, r.base_capacity, full_count, 0};
    p.tokens_per_s += static_cast<double>(full_count * per_node) * instance;
    if (uncovered == 0) {
      std::vector<planner::NodeBlocks> partial;
      for (int32_t n : req.targets) {
        if (is_full[n]) continue;
        planner::NodeBlocks nb{n, planner::SliceSet(blocks)};
        for (uint32_t b = 0; b < blocks; ++b) {
          if (block_done[n][b] <= t) nb.blocks.Set(b);
        }
        if (!nb.blocks.Empty()) partial.push_back(std::move(nb));
      }
      for (const auto& pipe : planner::FormPipelines(m, partial, max_stages)) {
        ++p.pipelines;
        p.tokens_per_s += PipelineTokensPerSecond(sc, pipe, o.batch, overhead);
      }
    }
    if (p.pipelines > 0 && r.first_pipeline < 0) r.first_pipeline = t;
    if (r.capacity.empty() || r.capacity.back().tokens_per_s != p.tokens_per_s ||
        r.capacity.back().pipelines != p.pipelines || r.capacity.back().full_instances != p.full_instances) {
      r.capacity.push_back(p);
    }
  }
  r.first_serving = r.first_pipeline >= 0 ? std::min(r.first_pipeline, r.first_full) : r.first_full;
  r.final_capacity = r.capacity.empty() ? r.base_capacity : r.capacity.back().tokens_per_s;
  return r;
}

}  // namespace modelcast::sim
