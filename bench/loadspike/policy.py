"""The autoscaler policy of the load-spike benchmark: the simple one a user would write.

Every tick it is told the requests outstanding at the front door (queued or running), the
arrival rate over the last `window` seconds, how many replicas are held (loading, serving as
pipelines or local) and whether a scale operation is still running. It wants
  ceil(max(outstanding, rate x service_s) / per_replica)
replicas, between min_replicas and max_replicas. It scales out at once by the difference (one
operation at a time: the coordinator refuses a second on the same model), and scales in only
after the want has stayed below what is held for keep_alive seconds. The same class drives the
cluster in a box (through the coordinator's Thrift API) and the simulator.
"""
import collections
import math


class Autoscaler:
    def __init__(self, min_replicas, max_replicas, per_replica, service_s, keep_alive, window=2.0):
        if not (1 <= min_replicas <= max_replicas):
            raise ValueError("need 1 <= min_replicas (%d) <= max_replicas (%d)" % (min_replicas, max_replicas))
        if not (per_replica > 0 and service_s > 0 and keep_alive >= 0 and window > 0):
            raise ValueError("per_replica and service_s must be more than 0, keep_alive not negative")
        self.min, self.max = min_replicas, max_replicas
        self.per_replica, self.service_s, self.keep_alive, self.window = per_replica, service_s, keep_alive, window
        self.arrivals = collections.deque()
        self.low_since = None
        self.decisions = []  # (t, "out"|"in", n, want, held)

    def arrived(self, t):
        self.arrivals.append(t)

    def rate(self, now):
        while self.arrivals and self.arrivals[0] < now - self.window:
            self.arrivals.popleft()
        return len(self.arrivals) / self.window

    def want(self, now, outstanding):
        load = max(outstanding, self.rate(now) * self.service_s)
        return max(self.min, min(self.max, int(math.ceil(load / self.per_replica))))

    def decide(self, now, outstanding, held, busy):
        """+n: scale out by n; -n: scale in by n; 0: nothing."""
        want = self.want(now, outstanding)
        if want >= held:
            self.low_since = None
        elif self.low_since is None:
            self.low_since = now
        if busy:
            return 0
        if want > held:
            self.decisions.append((now, "out", want - held, want, held))
            return want - held
        if want < held and now - self.low_since >= self.keep_alive:
            self.decisions.append((now, "in", held - want, want, held))
            self.low_since = now
            return -(held - want)
        return 0
