// Draws a plan as an SVG timeline: one row per node, time left to right; each received slice
// a bar coloured by slice (hue runs through the model), local loads hatched, the tick a node
// becomes a full instance marked, the stretches a node serves in a pipeline underlined, and
// a lane at the bottom counting the pipelines that can serve at each tick.
#pragma once

#include <string>

#include "modelcast/planner/plan.h"

namespace modelcast::planner {

struct SvgOptions {
  int max_rows = 64;  // nodes drawn (the rest are summarised in a caption)
  int width = 1200;   // pixels for the time axis
};

std::string RenderPlanSvg(const Plan& plan, const SvgOptions& options = {});

}  // namespace modelcast::planner
