// A persistent thread pool owned by edgecompress (not OpenMP, so the package shares a process with
// torch, numpy and onnxruntime without two runtimes fighting over the cores).
//
// parallel_for runs body(i) for i in [0, n) on the calling thread plus up to threads - 1 workers:
// each first takes the tasks of its own contiguous part of [0, n) (the caller the first), then
// what is left of the others' (so ops that split the same rows alike run them on the same core).
// Tasks write disjoint outputs, so results never depend on which thread ran what. When two callers
// want the pool at once (several Python threads), the second runs its tasks serially on its own
// thread instead of waiting: no oversubscription and no deadlock. Workers spin briefly after a job,
// then sleep. After fork(), the child starts a fresh pool on first use.
#pragma once

namespace edgecompress {

// Threads a pool uses by default: the CPUs in this process's affinity mask.
int default_num_threads();

int get_num_threads();
void set_num_threads(int n);  // n >= 1

// While one is alive, the pool's idle workers spin instead of sleeping (and sleeping ones are woken):
// for a run of many parallel ops with serial work between them (a program's nodes). threads: the
// run's thread count (1: no effect).
class PoolHold {
 public:
  explicit PoolHold(int threads);
  ~PoolHold();
  PoolHold(const PoolHold&) = delete;
  PoolHold& operator=(const PoolHold&) = delete;

 private:
  bool held_;
};

namespace detail {
void parallel_run(int n, int max_threads, void (*fn)(void* ctx, int i), void* ctx);
}

template <class Body>
void parallel_for(int n, int max_threads, Body& body) {
  auto call = [](void* ctx, int i) { (*static_cast<Body*>(ctx))(i); };
  detail::parallel_run(n, max_threads, call, static_cast<void*>(&body));
}

}  // namespace edgecompress
