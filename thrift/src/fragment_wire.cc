#include "modelcast/rpc/fragment_wire.h"

namespace modelcast::rpc {
namespace {

std::vector<FragmentStep> Steps(const std::vector<fabric::FragmentStep>& in) {
  std::vector<FragmentStep> out;
  out.reserve(in.size());
  for (const auto& x : in) {
    FragmentStep st;
    st.tick = static_cast<int32_t>(x.tick);
    st.peer = x.peer;
    st.slice = static_cast<int32_t>(x.slice);
    out.push_back(std::move(st));
  }
  return out;
}

Status Steps(const std::vector<FragmentStep>& in, const char* what, std::vector<fabric::FragmentStep>* out) {
  for (const auto& x : in) {
    if (x.tick < 0 || x.slice < 0) {
      return InvalidArgument(std::string("runFragment: a step of ") + what + " has tick " + std::to_string(x.tick) +
                             " and slice " + std::to_string(x.slice) + " (peer '" + x.peer + "')");
    }
    out->push_back({static_cast<uint32_t>(x.tick), x.peer, static_cast<uint32_t>(x.slice)});
  }
  return Status::Ok();
}

}  // namespace

void ToWire(const fabric::PlanFragment& fragment, RunFragmentRequest* req) {
  req->sends = Steps(fragment.sends);
  req->receives = Steps(fragment.receives);
  req->local_loads.assign(fragment.local_loads.begin(), fragment.local_loads.end());
}

Result<fabric::PlanFragment> FromWire(const RunFragmentRequest& req, const std::string& node, uint32_t num_slices) {
  fabric::PlanFragment f;
  f.node = node;
  MC_RETURN_IF_ERROR(Steps(req.sends, "its sends", &f.sends));
  MC_RETURN_IF_ERROR(Steps(req.receives, "its receives", &f.receives));
  for (int32_t s : req.local_loads) {
    if (s < 0) return InvalidArgument("runFragment: local slice " + std::to_string(s) + " is negative");
    f.local_loads.push_back(static_cast<uint32_t>(s));
  }
  MC_RETURN_IF_ERROR(f.Validate(req.model, num_slices).WithContext("runFragment"));
  return f;
}

}  // namespace modelcast::rpc
