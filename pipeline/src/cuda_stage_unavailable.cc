// Where modelcast was built without CUDA, asking for a CUDA stage is an error that says so.
#include "stage_internal.h"

namespace modelcast::pipeline {

Result<std::unique_ptr<Stage>> CreateCudaStage(const model::LlamaConfig&, LayerRange, const WeightLookup&,
                                               StageOptions) {
  return Unimplemented("a CUDA stage was asked for, but this build of modelcast has no CUDA executor");
}

}  // namespace modelcast::pipeline
