#include "edgecompress/threadpool.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <sched.h>
#endif
#include <pthread.h>

namespace edgecompress {

namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ volatile("yield");
#endif
}

// The CPU the calling thread runs on (-1 where unknown).
inline int current_cpu() {
#if defined(__linux__)
  return sched_getcpu();
#else
  return -1;
#endif
}

// A worker just woken onto the CPU of the thread that woke it (`cpu`) moves to another CPU it may
// run on: its affinity without that CPU for a moment (the kernel migrates it then), then back as it
// was. After the caller slept (a pause between two calls from Python), Linux woke the worker on the
// caller's CPU (wake-affine) while the other CPU idled, and the two shared one CPU until the load
// balancer moved one: on a 2-vCPU VM, after a 0.2 s pause, 13 of 16 calls of ResNet-18 int8-static
// on two threads ran at the speed of one (about 4.9 ms against 2.4). No thread's affinity changes.
void move_off(int cpu) {
#if defined(__linux__)
  if (cpu < 0 || current_cpu() != cpu) return;
  cpu_set_t mine;
  if (sched_getaffinity(0, sizeof(mine), &mine) != 0 || !CPU_ISSET(cpu, &mine) || CPU_COUNT(&mine) < 2) return;
  cpu_set_t others = mine;
  CPU_CLR(cpu, &others);
  if (sched_setaffinity(0, sizeof(others), &others) == 0) sched_setaffinity(0, sizeof(mine), &mine);
#else
  (void)cpu;
#endif
}

// How long an idle worker spins before it sleeps, after a job or after the last hold ends (about the gap
// between two calls from Python: shorter, the next call found it asleep).
constexpr int kSpinMicros = 1000;
// Pauses the caller spins, waiting for the helpers' last tasks, before it yields its CPU each time.
constexpr int kSpinsBeforeYield = 256;

class ThreadPool {
 public:
  explicit ThreadPool(int threads) : threads_(threads), parts_(new Part[std::max(threads, 1)]) {}

  ~ThreadPool() { stop_workers(); }

  int threads() const { return threads_.load(std::memory_order_relaxed); }

  void resize(int threads) {
    std::lock_guard<std::mutex> busy(busy_);
    stop_workers();
    threads_.store(threads, std::memory_order_relaxed);
    parts_.reset(new Part[std::max(threads, 1)]);
  }

  // While held (a run of many parallel ops, with serial stretches between them), idle workers spin
  // instead of sleeping; a hold wakes sleeping ones, so that they are up before the first op.
  void hold() {
    caller_cpu_.store(current_cpu(), std::memory_order_relaxed);
    if (holds_.fetch_add(1) == 0) {
      std::lock_guard<std::mutex> lock(wake_mutex_);
      wake_.notify_all();
    }
  }
  void release() { holds_.fetch_sub(1); }

  void run(int n, int max_threads, void (*fn)(void*, int), void* ctx) {
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    // The size is read while holding busy_, so a concurrent resize cannot change it under us.
    int threads = busy.owns_lock() ? std::min(max_threads, threads_.load(std::memory_order_relaxed)) : 1;
    threads = std::min(threads, n);
    if (threads <= 1) {
      for (int i = 0; i < n; ++i) fn(ctx, i);
      return;
    }
    start_workers();
    {
      // Workers copy the job and its generation together under this lock, so none can mix one
      // job's generation with another's helper count.
      std::lock_guard<std::mutex> lock(wake_mutex_);
      const uint64_t gen = generation_.load(std::memory_order_relaxed) + 1;
      job_ = Job{fn, ctx, n, threads - 1, static_cast<uint32_t>(gen)};
      for (int q = 0; q < threads; ++q) {
        parts_[q].next.store(static_cast<uint64_t>(job_.tag) << 32 | static_cast<uint32_t>(part_begin(job_, q)));
      }
      caller_cpu_.store(current_cpu(), std::memory_order_relaxed);
      generation_.store(gen, std::memory_order_release);
    }
    wake_.notify_all();
    work(job_, 0);
    // Every task is taken; wait only for the helpers still running one. A helper that has not woken
    // yet is not waited for: it finds the job taken (or its tag gone) and goes back to sleep. (Waiting
    // for every helper to join cost up to a scheduler tick, 10 ms, on a VM whose idle vCPU woke late.)
    // Spin a little, then yield: a helper woken onto this thread's CPU (the scheduler may place it
    // there while the other CPU idles) runs only once this thread lets it; spinning on, the caller
    // held the CPU until the next scheduler tick, and one node of a run took 4 ms instead of 0.05.
    for (int spins = 0; active_.load() != 0; ++spins) {
      if (spins < kSpinsBeforeYield) cpu_relax();
      else std::this_thread::yield();
    }
  }

 private:
  struct Job {
    void (*fn)(void*, int) = nullptr;
    void* ctx = nullptr;
    int n = 0;
    int helpers = 0;   // workers 0 .. helpers-1 take part
    uint32_t tag = 0;  // the generation's low bits: each part's counter's high half while this job runs
  };

  // The tasks are split into one contiguous part per participant (the caller: 0, worker i: i + 1).
  // Each takes its own part first, in order, then what is left of the others'. Consecutive ops whose
  // tasks follow the same rows of the image then mostly run a row on the core whose cache holds it:
  // with one shared counter, the tasks went to whichever thread asked first, and about half of what
  // an op read had been written in the other core's L2 (a single-threaded op after a parallel one got
  // slower with a second thread).
  static int part_begin(const Job& job, int q) {
    return static_cast<int>(static_cast<int64_t>(job.n) * q / (job.helpers + 1));
  }

  // Takes tasks of `job` until none is left. A task is claimed by advancing a part's counter
  // (tag, index) only while its tag is the job's, so a helper holding an older job can never run one
  // of a newer job's indices with the older function. A helper counts itself in active_ before its
  // first claim: the caller, having passed every part with every index taken, then also sees every
  // helper still running a task.
  void work(const Job& job, int participant) {
    const bool helper = participant > 0;
    if (helper) active_.fetch_add(1);
    const int parts = job.helpers + 1;
    for (int k = 0; k < parts; ++k) {
      const int q = (participant + k) % parts;
      const uint32_t end = static_cast<uint32_t>(part_begin(job, q + 1));
      std::atomic<uint64_t>& next = parts_[q].next;
      for (;;) {
        uint64_t v = next.load();
        if (static_cast<uint32_t>(v >> 32) != job.tag || static_cast<uint32_t>(v) >= end) break;
        if (!next.compare_exchange_weak(v, v + 1)) continue;
        job.fn(job.ctx, static_cast<int>(static_cast<uint32_t>(v)));
      }
    }
    if (helper) active_.fetch_sub(1);
  }

  // `seen` is the generation when the worker was created: a job published before the thread gets
  // to run must still be picked up. Each generation is joined at most once.
  void worker(int index, uint64_t seen) {
    for (;;) {
      // Spin while the pool is held, and for a short while after (back-to-back calls are common),
      // then sleep. (Sleeping inside a run cost a wake-up, up to a scheduler tick on a VM, at the
      // next parallel op after each serial stretch longer than the spin.)
      auto spin_until = std::chrono::steady_clock::now() + std::chrono::microseconds(kSpinMicros);
      while (generation_.load(std::memory_order_acquire) == seen && !stop_.load(std::memory_order_relaxed)) {
        const auto now = std::chrono::steady_clock::now();
        if (holds_.load(std::memory_order_relaxed) > 0) {
          spin_until = now + std::chrono::microseconds(kSpinMicros);
        } else if (now >= spin_until) {
          break;
        }
        for (int i = 0; i < 64; ++i) cpu_relax();
        // (and let a thread that shares this CPU run: the caller, when the scheduler put both here)
        std::this_thread::yield();
      }
      Job job;
      {
        std::unique_lock<std::mutex> lock(wake_mutex_);
        wake_.wait(lock, [&] {
          return generation_.load(std::memory_order_relaxed) != seen || stop_.load() || holds_.load() > 0;
        });
        if (stop_.load()) return;
        move_off(caller_cpu_.load(std::memory_order_relaxed));
        if (generation_.load(std::memory_order_relaxed) == seen) continue;  // woken by a hold: spin
        seen = generation_.load(std::memory_order_relaxed);
        job = job_;
      }
      if (index < job.helpers) work(job, index + 1);
    }
  }

  void start_workers() {
    const int want = threads_.load(std::memory_order_relaxed) - 1;
    if (static_cast<int>(workers_.size()) >= want) return;
    stop_.store(false);
    const uint64_t gen = generation_.load();
    for (int i = static_cast<int>(workers_.size()); i < want; ++i) workers_.emplace_back(&ThreadPool::worker, this, i, gen);
  }

  void stop_workers() {
    {
      std::lock_guard<std::mutex> lock(wake_mutex_);
      stop_.store(true);
    }
    wake_.notify_all();
    for (std::thread& t : workers_) t.join();
    workers_.clear();
    stop_.store(false);
  }

  std::atomic<int> threads_;
  std::vector<std::thread> workers_;
  std::mutex busy_;  // held by the caller whose job the workers run, and by resize
  std::mutex wake_mutex_;
  std::condition_variable wake_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<bool> stop_{false};
  Job job_;  // guarded by wake_mutex_
  struct alignas(64) Part {
    std::atomic<uint64_t> next{0};  // (job tag, next task index of the part)
  };
  std::unique_ptr<Part[]> parts_;  // one per thread; replaced only while no worker runs
  std::atomic<int> active_{0};     // helpers inside work()
  std::atomic<int> holds_{0};      // PoolHold objects alive
  std::atomic<int> caller_cpu_{-1};  // the CPU of the thread that last held the pool or published a job
};

std::mutex g_pool_mutex;
ThreadPool* g_pool = nullptr;  // leaked on purpose: workers must not be joined during exit or after fork
int g_threads = 0;             // 0: default_num_threads()

void forget_pool_after_fork() {
  // The child has none of the parent's worker threads; start over (the old pool is abandoned).
  new (&g_pool_mutex) std::mutex();
  g_pool = nullptr;
}

ThreadPool& pool() {
  static const bool registered = [] { return pthread_atfork(nullptr, nullptr, forget_pool_after_fork) == 0; }();
  (void)registered;
  std::lock_guard<std::mutex> lock(g_pool_mutex);
  if (g_pool == nullptr) g_pool = new ThreadPool(g_threads > 0 ? g_threads : default_num_threads());
  return *g_pool;
}

}  // namespace

int default_num_threads() {
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
#endif
  const unsigned n = std::thread::hardware_concurrency();
  return n > 0 ? static_cast<int>(n) : 1;
}

int get_num_threads() { return pool().threads(); }

void set_num_threads(int n) {
  ThreadPool& p = pool();
  {
    std::lock_guard<std::mutex> lock(g_pool_mutex);
    g_threads = n;
  }
  p.resize(n);
}

PoolHold::PoolHold(int threads) : held_(threads > 1 && get_num_threads() > 1) {
  if (held_) pool().hold();
}

PoolHold::~PoolHold() {
  if (held_) pool().release();
}

namespace detail {
void parallel_run(int n, int max_threads, void (*fn)(void*, int), void* ctx) {
  if (n <= 0) return;
  pool().run(n, max_threads, fn, ctx);
}
}  // namespace detail

}  // namespace edgecompress
