#include "modelcast/pipeline/pipeline.h"

namespace modelcast::pipeline {

Status CheckCoverage(const std::vector<LayerRange>& ranges, int64_t num_layers) {
  int64_t next = 0;
  for (const auto& r : ranges) {
    if (r.first != next) {
      return InvalidArgument("stages do not cover the model's layers in order: " + r.ToString() +
                             (r.first > next ? " leaves a gap after layer " : " overlaps layers before ") +
                             std::to_string(next));
    }
    next = r.end;
  }
  if (next != num_layers) {
    return InvalidArgument("stages cover layers 0-" + std::to_string(next - 1) + " of " + std::to_string(num_layers));
  }
  return Status::Ok();
}

Result<std::unique_ptr<LocalPipeline>> LocalPipeline::Create(std::vector<std::unique_ptr<Stage>> stages) {
  if (stages.empty()) return InvalidArgument("a pipeline needs at least one stage");
  std::vector<LayerRange> ranges;
  for (const auto& s : stages) ranges.push_back(s->layers());
  MC_RETURN_IF_ERROR(CheckCoverage(ranges, stages.front()->config().num_hidden_layers));
  auto p = std::unique_ptr<LocalPipeline>(new LocalPipeline());
  p->stages_ = std::move(stages);
  return p;
}

Status LocalPipeline::Step(const StepInput& input, StepOutput* output) {
  StepInput in;
  in.items = input.items;
  in.tokens = input.tokens;
  for (size_t i = 0; i < stages_.size(); ++i) {
    StepOutput out;
    MC_RETURN_IF_ERROR(stages_[i]->Forward(in, &out));
    if (i + 1 == stages_.size()) {
      *output = std::move(out);
    } else {
      in.tokens.clear();
      in.hidden = std::move(out.hidden);
    }
  }
  return Status::Ok();
}

void LocalPipeline::Drop(uint64_t request) {
  for (auto& s : stages_) s->Drop(request);
}

Result<Generation> Generate(Pipeline& pipeline, uint64_t request, const std::vector<int32_t>& prompt,
                            int max_tokens, const SamplingParams& sampling, int32_t stop) {
  MC_RETURN_IF_ERROR(sampling.Validate());
  if (prompt.empty()) return InvalidArgument("an empty prompt");
  if (max_tokens < 1) return InvalidArgument("max_tokens " + std::to_string(max_tokens) + " must be at least 1");
  Sampler sampler(sampling);
  Generation g;
  StepInput in;
  in.items = {{request, 0, static_cast<int32_t>(prompt.size())}};
  in.tokens = prompt;
  Status status;
  while (true) {
    StepOutput out;
    status = pipeline.Step(in, &out);
    if (!status.ok()) break;
    const int32_t next = sampler.Next(out.logits);
    g.tokens.push_back(next);
    g.logits.push_back(std::move(out.logits));
    if (static_cast<int>(g.tokens.size()) >= max_tokens || next == stop) break;
    in.items[0].position += in.items[0].num_tokens;
    in.items[0].num_tokens = 1;
    in.tokens = {next};
  }
  pipeline.Drop(request);
  if (!status.ok()) return status;
  return g;
}

}  // namespace modelcast::pipeline
