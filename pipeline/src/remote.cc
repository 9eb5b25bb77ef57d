#include "modelcast/pipeline/remote.h"

#include <glog/logging.h>

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include <nlohmann/json.hpp>

namespace modelcast::pipeline {
namespace {

// Message types on the serving channel.
constexpr uint16_t kStep = 1;    // header: StepMessage; payload: token ids (hop 0) or activations
constexpr uint16_t kResult = 2;  // header: {seq, code, message}; payload: logits
constexpr uint16_t kDrop = 3;    // header: {stage, request}

using Bytes = std::vector<uint8_t>;

struct StepMessage {
  uint64_t seq = 0;
  std::string origin;
  int hop = 0;
  std::vector<Hop> route;
  std::vector<StepItem> items;

  nlohmann::json ToJson() const {
    nlohmann::json r = nlohmann::json::array(), it = nlohmann::json::array();
    for (const auto& h : route) r.push_back({h.node, h.address, h.stage});
    for (const auto& i : items) it.push_back({i.request, i.position, i.num_tokens});
    return {{"seq", seq}, {"origin", origin}, {"hop", hop}, {"route", r}, {"items", it}};
  }
  static Result<StepMessage> FromJson(const std::vector<uint8_t>& header) {
    auto j = nlohmann::json::parse(header.begin(), header.end(), nullptr, false);
    if (j.is_discarded()) return InvalidArgument("a pipeline step whose header is not JSON");
    try {
      StepMessage m;
      m.seq = j.at("seq").get<uint64_t>();
      m.origin = j.at("origin").get<std::string>();
      m.hop = j.at("hop").get<int>();
      for (const auto& h : j.at("route")) m.route.push_back({h.at(0), h.at(1), h.at(2)});
      for (const auto& i : j.at("items")) m.items.push_back({i.at(0), i.at(1), i.at(2)});
      if (m.hop < 0 || m.hop >= static_cast<int>(m.route.size())) return InvalidArgument("a step past its route");
      return m;
    } catch (const nlohmann::json::exception& e) {
      return InvalidArgument(std::string("a malformed pipeline step: ") + e.what());
    }
  }
};

std::vector<uint8_t> Encode(const nlohmann::json& j) {
  const std::string s = j.dump();
  return Bytes(s.begin(), s.end());
}

template <typename T>
std::shared_ptr<Bytes> ToBytes(const std::vector<T>& v) {
  auto b = std::make_shared<Bytes>(v.size() * sizeof(T));
  if (!v.empty()) std::memcpy(b->data(), v.data(), b->size());
  return b;
}

template <typename T>
std::vector<T> FromBytes(const Bytes& b) {
  std::vector<T> v(b.size() / sizeof(T));
  if (!v.empty()) std::memcpy(v.data(), b.data(), v.size() * sizeof(T));
  return v;
}

struct Pending {
  bool done = false;
  Status status;
  std::vector<float> logits;
  std::set<std::string> nodes;
};

}  // namespace

struct PipelineNode::State : std::enable_shared_from_this<State> {
  fabric::Transport* transport = nullptr;
  std::string self;

  mutable std::mutex mu;
  std::condition_variable cv;
  std::map<std::string, std::shared_ptr<Stage>> stages;
  std::map<uint64_t, std::shared_ptr<Pending>> pending;
  uint64_t next_seq = 1;
  std::map<std::string, std::string> lost;  // peers that failed or left since we connected, and why
  // Stages expected but not built yet (their blocks are landing) -> the steps that reached them.
  std::map<std::string, std::vector<std::pair<StepMessage, Bytes>>> expected;
  std::set<std::string> warming;  // peers being connected to ahead of a held step's hand-off

  // Stages run one step at a time on this thread, never on the transport's progress thread.
  std::mutex task_mu;
  std::condition_variable task_cv;
  std::deque<std::function<void()>> tasks;
  bool stopping = false;
  std::thread worker;

  void Post(std::function<void()> f) {
    {
      std::lock_guard<std::mutex> lock(task_mu);
      if (stopping) return;
      tasks.push_back(std::move(f));
    }
    task_cv.notify_one();
  }

  void Work() {
    while (true) {
      std::function<void()> f;
      {
        std::unique_lock<std::mutex> lock(task_mu);
        task_cv.wait(lock, [&] { return stopping || !tasks.empty(); });
        if (stopping) return;
        f = std::move(tasks.front());
        tasks.pop_front();
      }
      f();
    }
  }

  // A step's result reaching its driver.
  void Deliver(uint64_t seq, Status status, std::vector<float> logits) {
    std::lock_guard<std::mutex> lock(mu);
    auto it = pending.find(seq);
    if (it == pending.end()) return;  // timed out or failed already
    it->second->done = true;
    it->second->status = std::move(status);
    it->second->logits = std::move(logits);
    cv.notify_all();
  }

  void FailPeer(const std::string& peer, const Status& cause) {
    std::lock_guard<std::mutex> lock(mu);
    lost[peer] = cause.message();
    for (auto& [seq, p] : pending) {
      if (p->done || !p->nodes.count(peer)) continue;
      p->done = true;
      p->status = Unavailable("pipeline stage on node '" + peer + "' failed: " + cause.message());
    }
    cv.notify_all();
  }

  void Send(const std::string& peer, uint16_t type, const nlohmann::json& header, std::shared_ptr<Bytes> payload,
            std::function<void(Status)> on_error) {
    auto h = Encode(header);
    std::span<const uint8_t> p = payload ? std::span<const uint8_t>(*payload) : std::span<const uint8_t>();
    transport->Send(peer, type, h, p, [payload, on_error = std::move(on_error)](Status s) {
      if (!s.ok() && on_error) on_error(s);
    });
  }

  void SendResult(const std::string& origin, uint64_t seq, const Status& status, const std::vector<float>& logits) {
    if (origin == self) {
      Deliver(seq, status, logits);
      return;
    }
    nlohmann::json h = {{"seq", seq}, {"code", static_cast<int>(status.code())}, {"message", status.message()}};
    Send(origin, kResult, h, status.ok() ? ToBytes(logits) : nullptr, [origin, seq](Status s) {
      LOG(WARNING) << "pipeline step " << seq << ": its result could not reach " << origin << ": " << s.ToString();
    });
  }

  // Runs the step's hop on this node (the worker thread), then passes it on.
  void RunStep(StepMessage m, Bytes payload) {
    const Hop& hop = m.route[m.hop];
    std::shared_ptr<Stage> stage;
    bool held = false;
    std::optional<Hop> ahead;
    {
      std::lock_guard<std::mutex> lock(mu);
      auto it = stages.find(hop.stage);
      if (it != stages.end()) {
        stage = it->second;
      } else if (auto e = expected.find(hop.stage); e != expected.end()) {
        if (m.hop + 1 < static_cast<int>(m.route.size())) ahead = m.route[m.hop + 1];
        e->second.emplace_back(std::move(m), std::move(payload));
        held = true;
      }
    }
    if (held) {
      // Held until the stage is built; the node of the next hop is connected to meanwhile.
      if (ahead) Warm(*ahead);
      return;
    }
    if (stage == nullptr) {
      SendResult(m.origin, m.seq, NotFound("node '" + self + "' serves no stage '" + hop.stage + "'"), {});
      return;
    }
    StepInput in;
    in.items = m.items;
    if (m.hop == 0) {
      in.tokens = FromBytes<int32_t>(payload);
    } else {
      in.hidden = FromBytes<float>(payload);
    }
    StepOutput out;
    Status s = stage->Forward(in, &out);
    if (!s.ok()) {
      SendResult(m.origin, m.seq, s.WithContext("node '" + self + "', stage '" + hop.stage + "'"), {});
      return;
    }
    if (m.hop + 1 == static_cast<int>(m.route.size())) {
      SendResult(m.origin, m.seq, Status::Ok(), out.logits);
      return;
    }
    m.hop += 1;
    const Hop& next = m.route[m.hop];
    if (next.node == self) {
      RunStep(std::move(m), std::move(*ToBytes(out.hidden)));
      return;
    }
    {
      std::unique_lock<std::mutex> lock(mu);  // a connection begun while the step was held
      cv.wait_for(lock, std::chrono::seconds(5), [&] { return !warming.count(next.node); });
    }
    Status c = fabric::ConnectWithRetry(*transport, next.node, next.address, 5);
    if (!c.ok()) {
      SendResult(m.origin, m.seq, c.WithContext("node '" + self + "' passing activations on"), {});
      return;
    }
    auto weak = weak_from_this();
    Send(next.node, kStep, m.ToJson(), ToBytes(out.hidden), [weak, origin = m.origin, seq = m.seq, next](Status s) {
      if (auto st = weak.lock()) {
        st->SendResult(origin, seq, s.WithContext("passing activations to node '" + next.node + "'"), {});
      }
    });
  }

  void OnMessage(const fabric::IncomingMessage& msg, fabric::AcceptPayload accept) {
    auto weak = weak_from_this();
    auto take = [&](std::function<void(Bytes)> then) {
      if (msg.payload_size == 0 || !accept) {
        then(Bytes());
        return;
      }
      auto buf = std::make_shared<Bytes>(msg.payload_size);
      accept(buf->data(), [buf, then = std::move(then)](Status s) {
        if (s.ok()) then(std::move(*buf));
      });
    };
    if (msg.type == kStep) {
      auto m = StepMessage::FromJson(msg.header);
      if (!m.ok()) {
        LOG(WARNING) << "pipeline: from " << msg.peer << ": " << m.status().ToString();
        if (accept) accept(nullptr, [](Status) {});
        return;
      }
      take([weak, m = std::move(*m)](Bytes payload) mutable {
        if (auto st = weak.lock()) {
          st->Post([weak, m = std::move(m), payload = std::move(payload)]() mutable {
            if (auto st2 = weak.lock()) st2->RunStep(std::move(m), std::move(payload));
          });
        }
      });
    } else if (msg.type == kResult) {
      auto j = nlohmann::json::parse(msg.header.begin(), msg.header.end(), nullptr, false);
      if (j.is_discarded() || !j.contains("seq")) {
        if (accept) accept(nullptr, [](Status) {});
        return;
      }
      const uint64_t seq = j.value("seq", uint64_t{0});
      const int code = j.value("code", 0);
      Status status = code == 0 ? Status::Ok() : Status(static_cast<StatusCode>(code), j.value("message", ""));
      take([weak, seq, status](Bytes payload) {
        if (auto st = weak.lock()) st->Deliver(seq, status, FromBytes<float>(payload));
      });
    } else if (msg.type == kDrop) {
      auto j = nlohmann::json::parse(msg.header.begin(), msg.header.end(), nullptr, false);
      if (accept) accept(nullptr, [](Status) {});
      if (j.is_discarded()) return;
      auto stage = FindStage(j.value("stage", ""));
      if (stage) stage->Drop(j.value("request", uint64_t{0}));
    } else if (accept) {
      accept(nullptr, [](Status) {});
    }
  }

  // Starts connecting to `hop`'s node unless it is this node or already being connected to
  // (mu not held: a transport may call back at once).
  void Warm(const Hop& hop) {
    {
      std::lock_guard<std::mutex> lock(mu);
      if (hop.node == self || !warming.insert(hop.node).second) return;
    }
    auto weak = weak_from_this();
    transport->Connect(hop.node, hop.address, [weak, node = hop.node](Status) {
      if (auto st = weak.lock()) {
        std::lock_guard<std::mutex> lock(st->mu);
        st->warming.erase(node);
        st->cv.notify_all();
      }
    });
  }

  // The held steps of an expected stage run (`cause` OK: it was built) or fail with `cause`.
  void Release(std::vector<std::pair<StepMessage, Bytes>> held, const Status& cause) {
    for (auto& [m, payload] : held) {
      if (!cause.ok()) {
        SendResult(m.origin, m.seq, cause, {});
        continue;
      }
      auto weak = weak_from_this();
      Post([weak, m = std::move(m), payload = std::move(payload)]() mutable {
        if (auto st = weak.lock()) st->RunStep(std::move(m), std::move(payload));
      });
    }
  }

  std::shared_ptr<Stage> FindStage(const std::string& key) const {
    std::lock_guard<std::mutex> lock(mu);
    auto it = stages.find(key);
    return it == stages.end() ? nullptr : it->second;
  }
};

namespace {

class RemotePipeline final : public Pipeline {
 public:
  RemotePipeline(std::shared_ptr<PipelineNode::State> st, std::vector<Hop> hops, int64_t vocab, int64_t positions,
                 double timeout)
      : st_(std::move(st)), hops_(std::move(hops)), vocab_(vocab), positions_(positions), timeout_(timeout) {}

  Status Step(const StepInput& input, StepOutput* output) override {
    if (input.tokens.size() != input.total_tokens()) {
      return InvalidArgument("the step has " + std::to_string(input.total_tokens()) + " tokens in its requests but " +
                             std::to_string(input.tokens.size()) + " token ids");
    }
    auto p = std::make_shared<Pending>();
    for (const auto& h : hops_) p->nodes.insert(h.node);
    StepMessage m;
    {
      std::lock_guard<std::mutex> lock(st_->mu);
      // A stage's node lost since the pipeline formed: its requests' KV caches are gone with it.
      for (const auto& h : hops_) {
        auto it = st_->lost.find(h.node);
        if (it != st_->lost.end()) {
          return Unavailable("pipeline stage on node '" + h.node + "' failed: " + it->second);
        }
      }
      m.seq = st_->next_seq++;
      st_->pending[m.seq] = p;
      current_ = m.seq;
    }
    m.origin = st_->self;
    m.route = hops_;
    m.items = input.items;
    if (hops_[0].node == st_->self) {
      std::weak_ptr<PipelineNode::State> weak = st_;
      st_->Post([weak, m, tokens = *ToBytes(input.tokens)]() mutable {
        if (auto st = weak.lock()) st->RunStep(std::move(m), std::move(tokens));
      });
    } else {
      std::weak_ptr<PipelineNode::State> weak = st_;
      st_->Send(hops_[0].node, kStep, m.ToJson(), ToBytes(input.tokens), [weak, seq = m.seq, node = hops_[0].node](Status s) {
        if (auto st = weak.lock()) st->Deliver(seq, s.WithContext("sending a step to node '" + node + "'"), {});
      });
    }
    std::unique_lock<std::mutex> lock(st_->mu);
    const bool done = st_->cv.wait_for(lock, std::chrono::duration<double>(timeout_), [&] { return p->done; });
    st_->pending.erase(m.seq);
    current_ = 0;
    if (!done) {
      return DeadlineExceeded("a pipeline step through " + Describe() + " took longer than " +
                              std::to_string(timeout_) + " s");
    }
    if (!p->status.ok()) return p->status;
    output->hidden.clear();
    output->logits = std::move(p->logits);
    if (output->logits.size() != input.items.size() * static_cast<size_t>(vocab_)) {
      return Internal("a pipeline step returned " + std::to_string(output->logits.size()) + " logits for " +
                      std::to_string(input.items.size()) + " requests");
    }
    return Status::Ok();
  }

  void Drop(uint64_t request) override {
    for (const auto& h : hops_) {
      if (h.node == st_->self) {
        if (auto stage = st_->FindStage(h.stage)) stage->Drop(request);
      } else {
        st_->Send(h.node, kDrop, {{"stage", h.stage}, {"request", request}}, nullptr, nullptr);
      }
    }
  }

  void Interrupt() override {
    std::lock_guard<std::mutex> lock(st_->mu);
    auto it = st_->pending.find(current_);  // seqs start at 1: none for 0
    if (it == st_->pending.end() || it->second->done) return;
    it->second->done = true;
    it->second->status = Cancelled("the step through " + Describe() + " was interrupted");
    st_->cv.notify_all();
  }

  int64_t vocab_size() const override { return vocab_; }
  int64_t max_positions() const override { return positions_; }

 private:
  std::string Describe() const {
    std::string s;
    for (const auto& h : hops_) s += (s.empty() ? "" : " -> ") + h.node;
    return s;
  }
  std::shared_ptr<PipelineNode::State> st_;
  std::vector<Hop> hops_;
  int64_t vocab_, positions_;
  double timeout_;
  uint64_t current_ = 0;  // the seq of the step in progress (0: none); under st_->mu
};

}  // namespace

std::string StageKey(const std::string& model, int first_block, int end_block) {
  return model + "/blocks/" + std::to_string(first_block) + "-" + std::to_string(end_block);
}

Result<std::unique_ptr<PipelineNode>> PipelineNode::Create(fabric::Transport& transport) {
  auto node = std::unique_ptr<PipelineNode>(new PipelineNode());
  auto st = std::make_shared<State>();
  st->transport = &transport;
  st->self = transport.name();
  st->worker = std::thread([raw = st.get()] { raw->Work(); });
  std::weak_ptr<State> weak = st;
  transport.SetMessageHandler([weak](const fabric::IncomingMessage& m, fabric::AcceptPayload accept) {
    if (auto s = weak.lock()) {
      s->OnMessage(m, std::move(accept));
    } else if (accept) {
      accept(nullptr, [](Status) {});
    }
  });
  transport.SetPeerFailureHandler([weak](const std::string& peer, const Status& cause) {
    if (auto s = weak.lock()) s->FailPeer(peer, cause);
  });
  node->state_ = std::move(st);
  return node;
}

PipelineNode::~PipelineNode() {
  state_->transport->SetMessageHandler([](const fabric::IncomingMessage&, fabric::AcceptPayload accept) {
    if (accept) accept(nullptr, [](Status) {});
  });
  state_->transport->SetPeerFailureHandler(nullptr);
  std::map<std::string, std::vector<std::pair<StepMessage, Bytes>>> expected;
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    expected.swap(state_->expected);
  }
  for (auto& [key, held] : expected) {
    state_->Release(std::move(held), Cancelled("node '" + state_->self + "' stopped before stage '" + key + "' was built"));
  }
  {
    std::lock_guard<std::mutex> lock(state_->task_mu);
    state_->stopping = true;
  }
  state_->task_cv.notify_all();
  if (state_->worker.joinable()) state_->worker.join();
  std::map<std::string, std::shared_ptr<Stage>> stages;
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    for (auto& [seq, p] : state_->pending) {
      p->done = true;
      p->status = Cancelled("the pipeline node stopped");
    }
    state_->cv.notify_all();
    // The stages go with the node, not with the last reference to its state: a stage may hold
    // what keeps its weights alive (the store's leases), which must not outlive the store.
    stages.swap(state_->stages);
  }
}

const std::string& PipelineNode::name() const { return state_->self; }

Status PipelineNode::AddStage(const std::string& key, std::shared_ptr<Stage> stage) {
  std::vector<std::pair<StepMessage, Bytes>> held;
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    if (!state_->stages.emplace(key, std::move(stage)).second) {
      return AlreadyExists("node '" + state_->self + "' already serves stage '" + key + "'");
    }
    if (auto e = state_->expected.find(key); e != state_->expected.end()) {
      held = std::move(e->second);
      state_->expected.erase(e);
    }
  }
  state_->Release(std::move(held), Status::Ok());
  return Status::Ok();
}

Status PipelineNode::ExpectStage(const std::string& key) {
  std::lock_guard<std::mutex> lock(state_->mu);
  if (state_->stages.count(key) || state_->expected.count(key)) {
    return AlreadyExists("node '" + state_->self + "' already serves stage '" + key + "'");
  }
  state_->expected[key];
  return Status::Ok();
}

size_t PipelineNode::HeldSteps(const std::string& key) const {
  std::lock_guard<std::mutex> lock(state_->mu);
  auto e = state_->expected.find(key);
  return e == state_->expected.end() ? 0 : e->second.size();
}

void PipelineNode::FailExpected(const std::string& key, const Status& cause) {
  std::vector<std::pair<StepMessage, Bytes>> held;
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    auto e = state_->expected.find(key);
    if (e == state_->expected.end()) return;
    held = std::move(e->second);
    state_->expected.erase(e);
  }
  state_->Release(std::move(held), cause.WithContext("node '" + state_->self + "', stage '" + key + "'"));
}

void PipelineNode::Warm(const std::string& node, const std::string& address) { state_->Warm({node, address, ""}); }

Status PipelineNode::RemoveStage(const std::string& key) {
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    if (state_->stages.erase(key) > 0) return Status::Ok();
    if (!state_->expected.count(key)) return NotFound("node '" + state_->self + "' serves no stage '" + key + "'");
  }
  FailExpected(key, Unavailable("the stage was stopped before it was built"));
  return Status::Ok();
}

std::shared_ptr<Stage> PipelineNode::FindStage(const std::string& key) const { return state_->FindStage(key); }

std::vector<std::string> PipelineNode::stage_keys() const {
  std::lock_guard<std::mutex> lock(state_->mu);
  std::vector<std::string> out;
  for (const auto& [k, s] : state_->stages) out.push_back(k);
  return out;
}

Result<std::unique_ptr<Pipeline>> PipelineNode::Connect(std::vector<Hop> hops, const model::LlamaConfig& config,
                                                        double step_timeout) {
  if (hops.empty()) return InvalidArgument("a pipeline with no stages");
  for (const auto& h : hops) {
    if (h.node == state_->self) {
      if (!FindStage(h.stage)) return NotFound("node '" + state_->self + "' serves no stage '" + h.stage + "'");
      continue;
    }
    MC_RETURN_IF_ERROR(fabric::ConnectWithRetry(*state_->transport, h.node, h.address, 5));
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->lost.erase(h.node);
  }
  return std::unique_ptr<Pipeline>(new RemotePipeline(state_, std::move(hops), config.vocab_size,
                                                      config.MaxPositions(), step_timeout));
}

}  // namespace modelcast::pipeline
