#include "modelcast/planner/plan_svg.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <set>
#include <sstream>

namespace modelcast::planner {
namespace {

std::string Escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '&':
        out += "&amp;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

}  // namespace

std::string RenderPlanSvg(const Plan& plan, const SvgOptions& o) {
  // Rows: nodes that take part (send or receive), in index order.
  std::set<int32_t> involved;
  for (const auto& t : plan.transfers) {
    involved.insert(t.src);
    involved.insert(t.dst);
  }
  std::vector<int32_t> rows(involved.begin(), involved.end());
  const size_t hidden = rows.size() > static_cast<size_t>(o.max_rows) ? rows.size() - o.max_rows : 0;
  if (hidden) rows.resize(o.max_rows);
  std::map<int32_t, int> row_of;
  for (size_t i = 0; i < rows.size(); ++i) row_of[rows[i]] = static_cast<int>(i);

  const int label_w = 150, row_h = 16, top = 40, lane_h = 60;
  const double ticks = std::max<uint32_t>(plan.num_ticks, 1);
  const double px = o.width / ticks;
  const int height = top + static_cast<int>(rows.size()) * row_h + lane_h + 60;
  const int width = label_w + o.width + 20;
  std::ostringstream svg;
  char buf[512];
  std::snprintf(buf, sizeof(buf),
                "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\" "
                "font-size=\"11\">\n",
                width, height);
  svg << buf;
  svg << "<defs><pattern id=\"local\" width=\"4\" height=\"4\" patternUnits=\"userSpaceOnUse\">"
         "<path d=\"M0,4 L4,0\" stroke=\"#555\" stroke-width=\"1\"/></pattern></defs>\n";
  svg << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  std::snprintf(buf, sizeof(buf),
                "<text x=\"10\" y=\"18\" font-size=\"14\" font-weight=\"bold\">%s: %u slices, %u blocks, %u ticks of "
                "%.3g ms</text>\n",
                Escape(plan.algorithm).c_str(), plan.num_slices, plan.num_blocks, plan.num_ticks,
                plan.tick_seconds * 1e3);
  svg << buf;
  for (size_t i = 0; i < rows.size(); ++i) {
    const int y = top + static_cast<int>(i) * row_h;
    const std::string name =
        static_cast<size_t>(rows[i]) < plan.node_names.size() ? plan.node_names[rows[i]] : std::to_string(rows[i]);
    std::snprintf(buf, sizeof(buf), "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">%s</text>\n", label_w - 6, y + 12,
                  Escape(name).c_str());
    svg << buf;
    if (i % 2 == 0) {
      std::snprintf(buf, sizeof(buf), "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"#f4f4f4\"/>\n",
                    label_w, y, o.width, row_h);
      svg << buf;
    }
  }
  // Received slices on the receiver's row.
  for (const auto& t : plan.transfers) {
    auto it = row_of.find(t.dst);
    if (it == row_of.end()) continue;
    const double x = label_w + t.tick * px, w = std::max(0.8, t.duration * px - 0.2);
    const int y = top + it->second * row_h + 2;
    const int hue = plan.num_slices ? static_cast<int>(300.0 * t.slice / plan.num_slices) : 0;
    std::snprintf(buf, sizeof(buf),
                  "<rect x=\"%.2f\" y=\"%d\" width=\"%.2f\" height=\"%d\" fill=\"%s\"%s><title>tick %u: slice %u from "
                  "%s</title></rect>\n",
                  x, y, w, row_h - 4, t.local() ? "url(#local)" : ("hsl(" + std::to_string(hue) + ",70%,55%)").c_str(),
                  t.local() ? " stroke=\"#555\" stroke-width=\"0.3\"" : "", t.tick, t.slice,
                  t.local() ? "its own copy" : Escape(plan.node_names.at(t.src)).c_str());
    svg << buf;
  }
  // Pipeline membership (underline) and the pipeline-count lane.
  const int lane_y = top + static_cast<int>(rows.size()) * row_h + 20;
  size_t most = 1;
  for (const auto& set : plan.pipelines) most = std::max(most, set.pipelines.size());
  for (size_t i = 0; i < plan.pipelines.size(); ++i) {
    const auto& set = plan.pipelines[i];
    const uint32_t end = i + 1 < plan.pipelines.size() ? plan.pipelines[i + 1].tick : plan.num_ticks;
    const double x = label_w + set.tick * px, w = (end - set.tick) * px;
    for (const auto& p : set.pipelines) {
      for (const auto& st : p.stages) {
        auto it = row_of.find(st.node);
        if (it == row_of.end()) continue;
        std::snprintf(buf, sizeof(buf), "<rect x=\"%.2f\" y=\"%d\" width=\"%.2f\" height=\"2\" fill=\"black\"/>\n", x,
                      top + it->second * row_h + row_h - 2, w);
        svg << buf;
      }
    }
    const double h = static_cast<double>(lane_h) * set.pipelines.size() / most;
    std::snprintf(buf, sizeof(buf), "<rect x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" height=\"%.2f\" fill=\"#3a7\"/>\n", x,
                  lane_y + lane_h - h, w, h);
    svg << buf;
  }
  std::snprintf(buf, sizeof(buf), "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">pipelines (max %zu)</text>\n",
                label_w - 6, lane_y + lane_h / 2, most);
  svg << buf;
  // Full-instance markers.
  for (size_t n = 0; n < plan.full_at.size(); ++n) {
    auto it = row_of.find(static_cast<int32_t>(n));
    if (plan.full_at[n] < 0 || it == row_of.end()) continue;
    const double x = label_w + plan.full_at[n] * px;
    std::snprintf(buf, sizeof(buf),
                  "<path d=\"M%.2f,%d l4,%d l-8,0 z\" fill=\"black\"><title>full instance at tick %d</title></path>\n",
                  x, top + it->second * row_h + 2, row_h - 6, plan.full_at[n]);
    svg << buf;
  }
  // Time axis.
  const int axis_y = lane_y + lane_h + 16;
  const uint32_t step = std::max<uint32_t>(1, plan.num_ticks / 10);
  for (uint32_t t = 0; t <= plan.num_ticks; t += step) {
    std::snprintf(buf, sizeof(buf), "<text x=\"%.2f\" y=\"%d\" text-anchor=\"middle\">%u</text>\n", label_w + t * px,
                  axis_y, t);
    svg << buf;
  }
  std::snprintf(buf, sizeof(buf),
                "<text x=\"%d\" y=\"%d\">tick (bars: slices received, coloured by slice; hatched: local load; "
                "triangle: full instance; underline: serving in a pipeline)%s</text>\n",
                label_w, axis_y + 16, hidden ? (", " + std::to_string(hidden) + " more nodes not drawn").c_str() : "");
  svg << buf << "</svg>\n";
  return svg.str();
}

}  // namespace modelcast::planner
