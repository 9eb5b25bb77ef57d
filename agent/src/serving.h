// What an agent serves: pipeline stages (and full local instances, a stage of every block)
// built from blocks resident in its store's host memory, hosted by a PipelineNode on the
// agent's serving channel. A serving stage pins its blocks: they are not evicted under it.
#pragma once

#include <atomic>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "modelcast/fabric/transport.h"
#include "modelcast/pipeline/remote.h"
#include "modelcast/tiers/store.h"
#include "modelcast_types.h"

namespace modelcast::agent {

class ServingHost {
 public:
  static Result<std::unique_ptr<ServingHost>> Create(tiers::Store& store, fabric::Transport& channel,
                                                      std::string node);
  ~ServingHost();
  // Loads blocks [first_block, end_block) into host memory (from wherever the store has them),
  // builds the stage and hosts it under pipeline::StageKey(model, first_block, end_block).
  // With wait_for_blocks_s, blocks still landing are waited for instead: the stage is expected
  // at once (steps for it are held), built the moment its last block lands, and given up on
  // (its held steps failed, naming why) if they take longer than that.
  //
  // A stage is shared by the engines that asked for it: its owners, each named by the request's
  // pipeline_id (none: the full local instance). Another engine's Start of a built stage of the
  // same blocks adds it as an owner (the stage, its weights and the requests it holds stay, so a
  // pipeline that drains into the local instance of the same node loses nothing); Stop removes
  // the one it names, and the stage goes with its last owner. AlreadyExists: the same owner
  // asked again; Unavailable: the stage is still waiting for its blocks for another engine.
  Status Start(const rpc::ServeRequest& req);
  // NotFound when the stage is not hosted, or not for the request's owner. Both refuse a
  // request of an earlier coordinator epoch than the last heard (FailedPrecondition; see Joined).
  Status Stop(const rpc::ServeRequest& req);
  std::vector<rpc::Instance> List() const;
  // The agent joined the coordinator of incarnation `epoch`: it leads. The pipelines other
  // coordinators asked for died with their routers, so their shares of stages end here and a
  // stage left without owners stops (one still waiting for its blocks fails its held steps).
  // Local instances stay: the node's, whoever leads. A Start or Stop with a later epoch than
  // the last heard does the same for the earlier ones; one with an earlier epoch is refused.
  // Joining the same coordinator again changes nothing; one whose epoch is lower (its state
  // started over) is followed all the same.
  void Joined(int64_t epoch);
  // A slice of `model` landed in the store (the fragment runner says so): stages waiting for
  // their blocks look again.
  void Landed(const std::string& model);
  // Steps held for a stage still waiting for its blocks.
  size_t HeldSteps(const std::string& key) const { return pipelines_->HeldSteps(key); }

 private:
  struct Serving {
    rpc::Instance instance;
    bool built = false;
    bool cancelled = false;  // stopped while waiting for its blocks
    bool whole = false;      // every block of the model
    uint64_t generation = 0;  // of a stage asked for before its blocks landed: its waiter's
    std::set<std::string> owners;  // pipeline ids; "" is the full local instance
    std::map<std::string, int64_t> epochs;  // owner -> the coordinator epoch that asked
  };
  // Joined's work (`joined`), or a later epoch's that asks (not `joined`), with mu_ held.
  void EpochLocked(int64_t epoch, bool joined);
  // Ends a stage that has no owner left (mu_ held): a built one is removed from the node (an
  // error leaves it listed), one waiting for its blocks gives up and fails its held steps with
  // `why`.
  Status EndLocked(std::map<std::string, Serving>::iterator it, const std::string& why);
  // instance's state and pipeline_id from the owners: LOCAL while the local instance is one.
  static void Describe(Serving& s);
  static std::string Owners(const std::set<std::string>& owners);
  // The engine a request is for: its pipeline_id, or "" (the local instance).
  static std::string OwnerOf(const rpc::ServeRequest& req);
  ServingHost() = default;
  bool Resident(const std::string& model, const std::vector<uint32_t>& blocks) const;
  // Makes the blocks resident in the tier the stage runs from, builds it and hosts it.
  // `expected`: the generation of the stage it was waited for as (Await), given up if that
  // stage was stopped meanwhile; 0 when asked for with its blocks resident. `req.epoch` is set.
  Status Build(const rpc::ServeRequest& req, const std::string& key, const std::vector<uint32_t>& blocks,
               uint64_t expected);
  // Waits for the blocks of an expected stage, then builds it (or gives up on it).
  void Await(rpc::ServeRequest req, std::string key, std::vector<uint32_t> blocks, uint64_t generation);

  tiers::Store* store_ = nullptr;
  std::string node_;
  std::unique_ptr<pipeline::PipelineNode> pipelines_;
  mutable std::mutex mu_;
  std::condition_variable landed_;  // with mu_
  bool stopping_ = false;
  int64_t epoch_ = 0;  // the latest coordinator incarnation heard from
  uint64_t generations_ = 0;
  std::map<std::string, Serving> serving_;
  struct Waiter {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> done;
  };
  std::vector<Waiter> waiters_;
};

}  // namespace modelcast::agent
