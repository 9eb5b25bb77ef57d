#include "modelcast/fabric/fragment.h"

#include <set>

namespace modelcast::fabric {

std::vector<std::string> PlanFragment::Peers() const {
  std::set<std::string> p;
  for (const auto& s : sends) p.insert(s.peer);
  for (const auto& r : receives) p.insert(r.peer);
  return {p.begin(), p.end()};
}

Status PlanFragment::Validate(const std::string& model, uint32_t num_slices) const {
  const std::string of = "plan fragment of '" + node + "' for model '" + model + "'";
  for (const auto* list : {&sends, &receives}) {
    for (const auto& s : *list) {
      if (s.slice >= num_slices) {
        return InvalidArgument(of + " names slice " + std::to_string(s.slice) + " (peer '" + s.peer +
                               "'), but the model has " + std::to_string(num_slices));
      }
      if (s.peer.empty() || s.peer == node) {
        return InvalidArgument(of + " names a bad peer ('" + s.peer + "') for slice " + std::to_string(s.slice));
      }
    }
  }
  for (uint32_t s : local_loads) {
    if (s >= num_slices) {
      return InvalidArgument(of + " loads slice " + std::to_string(s) + " locally, but the model has " +
                             std::to_string(num_slices));
    }
  }
  std::set<uint32_t> received;
  for (const auto& r : receives) {
    if (!received.insert(r.slice).second) {
      return InvalidArgument(of + " receives slice " + std::to_string(r.slice) + " twice");
    }
  }
  return Status::Ok();
}

}  // namespace modelcast::fabric
