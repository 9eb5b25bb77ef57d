// Every modelcast RPC. Bulk bytes never travel through Thrift: it carries requests, plan
// fragments, inventories and progress. Three services:
//   Coordinator  on the cluster head, for autoscalers and the `modelcast` CLI;
//   Membership   on the cluster head, for node agents (join, heartbeat, progress);
//   Agent        on every node, for the coordinator (plan fragments, tier moves, serving).
// Every call takes a RequestHeader first (credentials, caller, idempotency key) and every
// failure is a typed exception with a message that names what is wrong.

namespace cpp modelcast.rpc
namespace py modelcast_rpc

// Mirrors modelcast::StatusCode so that a Status crosses the RPC edge without losing its kind.
enum ErrorCode {
  INVALID_ARGUMENT = 1,
  NOT_FOUND = 2,
  ALREADY_EXISTS = 3,
  CORRUPTION = 4,
  IO_ERROR = 5,
  OUT_OF_RANGE = 6,
  RESOURCE_EXHAUSTED = 7,
  FAILED_PRECONDITION = 8,
  UNAVAILABLE = 9,
  DEADLINE_EXCEEDED = 10,
  CANCELLED = 11,
  UNIMPLEMENTED = 12,
  PERMISSION_DENIED = 13,
  INTERNAL = 14,
}

// The caller asked for something invalid; retrying the same request will fail the same way.
exception InvalidRequest {
  1: ErrorCode code,
  2: string message,
}

// The service cannot act now (a peer is down, the coordinator is recovering); retry later.
exception Unavailable {
  1: string message,
  2: i32 retry_after_ms,
}

// What a prepared package holds, as the coordinator and agents describe a model.
struct ModelSummary {
  1: string name,
  2: string dtype,
  3: i64 num_layers,
  4: i32 num_blocks,
  5: i32 num_slices,
  6: i64 slice_bytes,
  7: i64 total_bytes,
  8: i64 parameters,
}

// The caller's credentials could not be checked: no token, a wrong one, or no client
// certificate where mutual TLS is required. Nothing was changed.
exception NotAuthorized {
  1: string message,
}

// Sent first in every request.
struct RequestHeader {
  1: optional string token,       // the shared secret, where mutual TLS is not configured
  2: optional string caller,      // for logs: "autoscaler", "cli", a node's name
  3: optional string request_id,  // idempotency key: a retried scaleOut with the same id returns the same operation
}

// ---- What nodes hold ----

// Slices first .. first + count - 1.
struct SliceRun {
  1: i32 first,
  2: i32 count,
}

struct TierUsage {
  1: string tier,   // "ssd", "host", "gpu"
  2: i64 capacity,
  3: i64 used,
  4: i64 pinned,    // cannot be evicted now
}

struct GpuInfo {
  1: i32 index,
  2: string name,
  3: i64 memory_bytes,
  4: i64 free_bytes,
}

// One model on one node: which slices each tier holds.
struct ModelHolding {
  1: string model,
  2: string manifest_xxh3,  // which version (XXH3 of the manifest as serialized)
  3: list<SliceRun> ssd,
  4: list<SliceRun> host,
  5: list<SliceRun> gpu,
  6: bool ssd_complete,
  7: optional string ssd_error,  // why the copy could not be written behind to SSD (it stays in host memory only)
}

struct NodeInventory {
  1: list<TierUsage> tiers,
  2: list<GpuInfo> gpus,
  3: list<ModelHolding> models,
}

// ---- Coordinator: for autoscalers ----

struct ModelInfo {
  1: ModelSummary summary,
  2: double keep_alive_s,
  3: i32 instances,        // full local instances serving
  4: i32 loading,          // replicas being loaded (serving as pipelines or not yet)
  5: list<string> gpu_holders,
  6: list<string> host_holders,
  7: list<string> ssd_holders,
  8: optional map<string, string> ssd_errors,  // node -> why its copy could not be written to SSD
}

struct RegisterModelRequest {
  1: RequestHeader header,
  2: string name,
  3: string manifest_json,       // the package's manifest.json
  4: optional double keep_alive_s,
  5: optional map<string, binary> text_files,  // the files its manifest lists in text_files (the tokenizer's)
}

struct ScaleOptions {
  1: optional string algorithm,       // "lambdapipe" (default), "binomial", "binary-tree", "chain", "unicast"
  2: optional list<string> targets,   // only these nodes may receive
  3: optional double deadline_s,      // the whole operation (default: from the cluster config)
  4: optional bool dry_run,           // plan and report, move nothing
}

struct ScaleOutRequest {
  1: RequestHeader header,
  2: string model,
  3: i32 replicas,                    // new replicas wanted (>= 1)
  4: optional ScaleOptions options,
}

struct ScaleOutResponse {
  1: string operation_id,
  2: list<string> targets,
  3: list<string> sources,
  4: optional string plan_json,        // with dry_run
}

struct ScaleInRequest {
  1: RequestHeader header,
  2: string model,
  3: i32 replicas,                     // replicas to release (>= 1)
  4: optional list<string> nodes,      // which ones (default: the coordinator chooses)
}

enum OperationKind {
  SCALE_OUT = 1,
  SCALE_IN = 2,
}

enum OperationState {
  PENDING = 1,
  RUNNING = 2,
  SUCCEEDED = 3,
  FAILED = 4,
  CANCELLED = 5,
}

// A node's part in one operation.
enum NodeRole {
  SOURCE = 1,                          // sends (holds a whole copy)
  TARGET = 2,                          // receives a copy
  RELEASE = 3,                         // a scale-in releases its instance
}

// Where one node stands in one operation.
enum NodeState {
  WAITING = 1,                         // not started (a source: until the operation ends)
  RECEIVING = 2,                       // a target with some of its slices
  COMPLETE = 3,                        // a target with every slice, a source done sending
  FAILED = 4,                          // its fragment or its release failed (see error)
  LOST = 5,                            // the node died or was taken out of the operation
  DRAINING = 6,                        // a released instance finishing its requests
  RELEASED = 7,                        // released, its GPU copy demoted
}

struct NodeProgress {
  1: string node,
  2: NodeRole role,
  3: i32 slices_received,
  4: i32 slices_total,
  5: i64 bytes_received,
  6: double rate_bytes_per_s,
  7: NodeState state,
  8: optional string error,
  9: optional double complete_unix,    // when a target had every slice
  10: optional i32 corrupt_slices,     // slices that arrived corrupt, were caught by their checksum and sent again
  11: optional double link_bytes_per_s, // the best rate any of this node's links carried in this operation
                                        // (measured by the senders: bytes over the time sends were in flight)
}

struct OperationStatus {
  1: string id,
  2: OperationKind kind,
  3: string model,
  4: i32 replicas,
  5: OperationState state,
  6: double created_unix,
  7: optional double started_unix,
  8: optional double finished_unix,
  9: list<NodeProgress> nodes,
  10: optional string error,
  11: i32 replans,                     // times the plan was redone (a node died)
  12: optional double first_pipeline_s, // since start: when the first pipeline of its targets formed (with serving.lookahead, before its last blocks land)
  13: optional double first_byte_unix,  // when the first slice started moving to a target
  14: optional double first_pipeline_blocks_s, // since start: when the first pipeline's last block landed
}

struct NodeStatus {
  1: string name,
  2: string rpc_address,
  3: bool alive,
  4: double last_heartbeat_unix,
  5: NodeInventory inventory,
  6: optional double measured_nic_bytes_per_s, // set when a multicast measured this node's link well below the
                                               // others': the rate plans now use for it (a straggler)
}

enum InstanceState {
  LOADING = 1,                         // receiving, cannot serve yet
  PIPELINE = 2,                        // serving as a stage of a cross-node pipeline
  LOCAL = 3,                           // a full local instance
  DRAINING = 4,                        // released, finishing its requests
}

struct Instance {
  1: string model,
  2: string node,
  3: InstanceState state,
  4: optional string pipeline_id,
  5: double since_unix,
}

struct ClusterStatus {
  1: string cluster,
  2: list<NodeStatus> nodes,
  3: list<ModelInfo> models,
  4: list<OperationStatus> active_operations,
}

service Coordinator {
  ModelInfo registerModel(1: RegisterModelRequest req)
      throws (1: InvalidRequest invalid, 2: Unavailable unavailable, 3: NotAuthorized denied),
  list<ModelInfo> listModels(1: RequestHeader header)
      throws (1: InvalidRequest invalid, 2: Unavailable unavailable, 3: NotAuthorized denied),
  ScaleOutResponse scaleOut(1: ScaleOutRequest req)
      throws (1: InvalidRequest invalid, 2: Unavailable unavailable, 3: NotAuthorized denied),
  string scaleIn(1: ScaleInRequest req)
      throws (1: InvalidRequest invalid, 2: Unavailable unavailable, 3: NotAuthorized denied),
  OperationStatus getOperation(1: RequestHeader header, 2: string operation_id)
      throws (1: InvalidRequest invalid, 2: Unavailable unavailable, 3: NotAuthorized denied),
  ClusterStatus getClusterStatus(1: RequestHeader header)
      throws (1: InvalidRequest invalid, 2: Unavailable unavailable, 3: NotAuthorized denied),
  list<Instance> listInstances(1: RequestHeader header, 2: string model)
      throws (1: InvalidRequest invalid, 2: Unavailable unavailable, 3: NotAuthorized denied),
}

// ---- Membership: for node agents ----

struct JoinRequest {
  1: RequestHeader header,
  2: string node,
  3: string rpc_address,               // host:port of its Agent service
  4: string fabric_address,            // host:port its transport listens on
  5: NodeInventory inventory,
  6: double nic_bytes_per_s,
  7: string version,
  8: optional string serving_address,  // host:port of its serving transport (pipeline activations)
}

struct JoinResponse {
  1: string cluster,
  2: i64 epoch,                        // the coordinator's incarnation: a new one asks agents to rejoin
  3: i32 heartbeat_interval_ms,
  4: i32 heartbeat_deadline_ms,        // a node silent this long is taken as dead
}

struct HeartbeatRequest {
  1: RequestHeader header,
  2: string node,
  3: i64 epoch,
  4: optional NodeInventory inventory, // when it changed
}

struct HeartbeatResponse {
  1: bool rejoin,                      // the coordinator does not know this node (it restarted)
}

struct SliceProgress {
  1: i32 slice,
  2: string source,                    // a peer, or the tier it came from
  3: i64 bytes,
  4: double started,                   // seconds since the fragment began
  5: double finished,
}

// What one end of a link measured in a fragment: the bytes that crossed it and the seconds the
// link was busy carrying them (bytes / busy_s: its rate while in use). Senders time their sends,
// receivers the arrivals of slice messages; see fabric::LinkUse.
struct LinkSample {
  1: string peer,
  2: i64 bytes,
  3: double busy_s,
}

// Why a fragment failed, as far as the node can tell: the coordinator repairs a node whose own
// store refused (it cannot hold or supply the model now) as it repairs a lost node.
enum FragmentFailure {
  OTHER = 1,                           // a peer, the network, a cancellation, a bad plan
  STORE = 2,                           // this node's store refused: full, unreadable, gone
}

struct ProgressReport {
  1: RequestHeader header,
  2: string node,
  3: string operation_id,
  4: list<SliceProgress> slices,       // since the last report
  5: bool done,
  6: optional string error,            // the fragment failed: why, naming peer and slices
  7: optional double started_unix,     // when the fragment began (SliceProgress times count from it)
  8: optional i32 corrupt_slices,      // at the end: slices that failed their checksum on arrival and came again
  9: optional list<LinkSample> sent_to,       // at the end: per receiver, timed by this node's sends
  10: optional list<LinkSample> received_from, // at the end: per sender, timed by its slices' arrivals
  11: optional FragmentFailure failure, // with error: what failed
}

service Membership {
  JoinResponse join(1: JoinRequest req)
      throws (1: InvalidRequest invalid, 2: Unavailable unavailable, 3: NotAuthorized denied),
  HeartbeatResponse heartbeat(1: HeartbeatRequest req)
      throws (1: InvalidRequest invalid, 2: Unavailable unavailable, 3: NotAuthorized denied),
  void reportProgress(1: ProgressReport report)
      throws (1: InvalidRequest invalid, 2: Unavailable unavailable, 3: NotAuthorized denied),
}

// ---- Agent: for the coordinator ----

struct FragmentStep {
  1: i32 tick,
  2: string peer,
  3: i32 slice,
}

struct PeerAddress {
  1: string node,
  2: string fabric_address,
}

struct RunFragmentRequest {
  1: RequestHeader header,
  2: string operation_id,
  3: string model,
  4: string manifest_json,
  5: list<FragmentStep> sends,
  6: list<FragmentStep> receives,
  7: list<i32> local_loads,            // slices this node loads from its own tiers
  8: list<PeerAddress> peers,
  9: double deadline_s,
  10: string method,                   // "auto", "messages", "writes"
  11: i32 channel,                     // 1..255: the fabric channel of this operation's messages
                                       // (distinct among the operations running on a node)
  12: optional map<string, binary> text_files,  // to a receiver: the files the manifest lists beside its blocks
}

struct MoveRequest {
  1: RequestHeader header,
  2: string model,
  3: list<i32> blocks,                 // empty: all
  4: string tier,                      // load: "host" or "gpu"; demote: "host" or "ssd"
}

struct ServeRequest {
  1: RequestHeader header,
  2: string model,
  3: optional string pipeline_id,      // absent: a full local instance
  4: i32 first_block,
  5: i32 end_block,
  6: optional string next_stage,       // the node that takes this stage's activations
  // Set when the stage's blocks are still landing (the plan says they land soon): the agent
  // answers at once, holds steps that arrive for the stage, builds it when its last block
  // lands, and gives up (failing the held steps) if that takes longer than this many seconds.
  7: optional double wait_for_blocks_s,
  8: optional string next_stage_address, // next_stage's serving address: connected to at once, not on the first step
  // The incarnation of the coordinator that asks (JoinResponse.epoch). A pipeline's stage is
  // its leader's: once the agent joins another coordinator, or one of a later epoch asks, the
  // other coordinators' pipelines lose their stages, and an earlier epoch is refused what it
  // asks afterwards. A full local instance is the node's, and stays. Absent: the epoch the
  // agent joined last.
  9: optional i64 epoch,
}

struct AgentStatus {
  1: string node,
  2: NodeInventory inventory,
  3: list<string> running_operations,
  4: list<Instance> serving,
}

service Agent {
  // Accepted once validated; it runs in the background and reports through Membership.reportProgress.
  void runFragment(1: RunFragmentRequest req)
      throws (1: InvalidRequest invalid, 2: Unavailable unavailable, 3: NotAuthorized denied),
  // Returns once the fragment has ended and sent its last report (Unavailable after 5 s).
  void cancelOperation(1: RequestHeader header, 2: string operation_id)
      throws (1: InvalidRequest invalid, 2: Unavailable unavailable, 3: NotAuthorized denied),
  void load(1: MoveRequest req)
      throws (1: InvalidRequest invalid, 2: Unavailable unavailable, 3: NotAuthorized denied),
  void demote(1: MoveRequest req)
      throws (1: InvalidRequest invalid, 2: Unavailable unavailable, 3: NotAuthorized denied),
  void evict(1: MoveRequest req)
      throws (1: InvalidRequest invalid, 2: Unavailable unavailable, 3: NotAuthorized denied),
  void startServing(1: ServeRequest req)
      throws (1: InvalidRequest invalid, 2: Unavailable unavailable, 3: NotAuthorized denied),
  void stopServing(1: ServeRequest req)
      throws (1: InvalidRequest invalid, 2: Unavailable unavailable, 3: NotAuthorized denied),
  AgentStatus getStatus(1: RequestHeader header)
      throws (1: InvalidRequest invalid, 2: Unavailable unavailable, 3: NotAuthorized denied),
}

// Serving: requests to the model's instances and pipelines, through the coordinator's router
// (also `POST /v1/completions`, OpenAI-compatible, on the serving HTTP port).
// One message of a chat, as OpenAI's chat API has it (text content).
struct ChatMessage {
  1: string role,                       // system, user, assistant, tool or developer
  2: string content,
}

struct GenerateRequest {
  1: RequestHeader header,
  2: string model,
  // The prompt, one of: token ids; text, through the model's own tokenizer (special tokens
  // added as its post-processor says; byte-level for a model without one); or chat messages,
  // rendered by the model's chat template with its generation prompt.
  3: optional list<i32> prompt_tokens,
  4: optional string prompt_text,
  10: optional list<ChatMessage> messages,
  5: i32 max_tokens = 16,
  6: double temperature = 0,            // 0: greedy
  7: double top_p = 1.0,
  8: i64 seed = 0,
  9: optional i32 stop_token,           // absent: the model's eos ids; -1: none
  11: optional list<string> stop,       // stop strings: the answer ends before the first one its text holds
}

struct GenerateResponse {
  1: list<i32> tokens,
  2: string text,                       // the answer's text (special tokens left out), before any stop string
  3: string finish_reason,              // "length" or "stop" (a stop token or string)
  4: double ttft_s,                     // from arrival to the first token
  5: double tpot_s,                     // mean time per output token after the first
  6: double queued_s,
  7: string served_by,                  // "MODEL@NODE" (a full local instance) or "MODEL/pN" (a pipeline)
  8: i32 attempts,                      // engines it ran on (more than one: a stage's node was lost)
}

service Router {
  GenerateResponse generate(1: GenerateRequest req)
      throws (1: InvalidRequest invalid, 2: Unavailable unavailable, 3: NotAuthorized denied),
}
