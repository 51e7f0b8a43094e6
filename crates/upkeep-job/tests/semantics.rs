//! One test per rule of the design's "Job semantics". Synchronisation is by channels and
//! barriers; no sleep stands in for it.
#![allow(clippy::disallowed_methods)] // fixtures are set up with std::fs directly

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use upkeep_job::{AsyncState, Callbacks, Job};
use upkeep_types::HResult;

type J = Job<u32, &'static str>;

struct ThreadWaker(std::thread::Thread);
impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park_timeout(Duration::from_millis(100));
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Event {
    Progress(u32),
    Completed { is_completed: bool },
}

#[test]
fn callbacks_run_on_a_thread_that_is_neither_the_callers_nor_the_workers() {
    let caller = std::thread::current().id();
    let (tx, rx) = mpsc::channel();
    let (worker_tx, worker_rx) = mpsc::channel();
    let tx2 = tx.clone();
    let job: J = Job::spawn(
        "t",
        0,
        AsyncState::none(),
        Callbacks::none()
            .on_progress(move |_, _| tx.send(("cb", std::thread::current().id())).unwrap())
            .on_completed(move |_| tx2.send(("done", std::thread::current().id())).unwrap()),
        move |ctx| {
            worker_tx.send(std::thread::current().id()).unwrap();
            ctx.report(1);
            "ok"
        },
    )
    .unwrap();
    job.clean_up().unwrap();
    let worker = worker_rx.recv().unwrap();
    let ids: Vec<_> = rx.try_iter().collect();
    assert_eq!(ids.len(), 2);
    for (_, id) in &ids {
        assert_ne!(*id, caller);
        assert_ne!(*id, worker);
    }
    assert_eq!(ids[0].1, ids[1].1, "one dispatcher thread per job");
    assert_eq!(ids.last().unwrap().0, "done");
}

#[test]
fn completion_runs_exactly_once_after_the_last_progress_with_is_completed_true() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let (e1, e2) = (events.clone(), events.clone());
    let job: J = Job::spawn(
        "t",
        0,
        AsyncState::none(),
        Callbacks::none()
            .on_progress(move |_, p| e1.lock().unwrap().push(Event::Progress(*p)))
            .on_completed(move |j| {
                e2.lock().unwrap().push(Event::Completed {
                    is_completed: j.is_completed(),
                })
            }),
        |ctx| {
            for i in 1..=200 {
                ctx.report(i);
            }
            "ok"
        },
    )
    .unwrap();
    job.clean_up().unwrap();
    let ev = events.lock().unwrap().clone();
    assert_eq!(ev.last(), Some(&Event::Completed { is_completed: true }));
    assert_eq!(
        ev.iter()
            .filter(|e| matches!(e, Event::Completed { .. }))
            .count(),
        1
    );
    let seen: Vec<u32> = ev
        .iter()
        .filter_map(|e| {
            if let Event::Progress(p) = e {
                Some(*p)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(
        seen.last(),
        Some(&200),
        "the last snapshot is delivered before completion"
    );
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "snapshots arrive in order: {seen:?}"
    );
}

#[test]
fn a_slow_progress_callback_sees_coalesced_snapshots() {
    let (reported_tx, reported_rx) = mpsc::channel::<()>();
    let (in_cb_tx, in_cb_rx) = mpsc::channel::<()>();
    let reported_rx = Mutex::new(reported_rx);
    let calls = Arc::new(Mutex::new(Vec::new()));
    let c = calls.clone();
    let job: J = Job::spawn(
        "t",
        0,
        AsyncState::none(),
        Callbacks::none().on_progress(move |_, p| {
            c.lock().unwrap().push(*p);
            // The first call signals it is running, then waits until the worker has
            // reported everything else.
            if *p == 1 {
                in_cb_tx.send(()).unwrap();
                reported_rx.lock().unwrap().recv().unwrap();
            }
        }),
        move |ctx| {
            ctx.report(1);
            in_cb_rx.recv().unwrap();
            for i in 2..=1000 {
                ctx.report(i);
            }
            reported_tx.send(()).unwrap();
            "ok"
        },
    )
    .unwrap();
    job.clean_up().unwrap();
    let calls = calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        vec![1, 1000],
        "999 reports during a slow callback coalesce into one"
    );
}

#[test]
fn callbacks_may_read_the_job_request_abort_and_take_the_result() {
    let (result_tx, result_rx) = mpsc::channel();
    let job: J = Job::spawn(
        "t",
        0,
        AsyncState::new(String::from("mine")),
        Callbacks::none()
            .on_progress(|job, p| {
                assert_eq!(
                    job.async_state()
                        .downcast_ref::<String>()
                        .map(String::as_str),
                    Some("mine")
                );
                let _ = job.progress();
                // Every progress callback runs before the job completes.
                assert!(
                    !job.is_completed(),
                    "progress {p} delivered after completion"
                );
                job.request_abort();
            })
            .on_completed(move |job| result_tx.send(job.take_result()).unwrap()),
        |ctx| {
            ctx.report(1);
            // Runs until the progress callback asks it to stop (bounded, so a failed
            // assertion in the callback fails the test instead of hanging it).
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while !ctx.is_abort_requested() && std::time::Instant::now() < deadline {
                std::thread::yield_now();
            }
            if ctx.is_abort_requested() {
                "aborted"
            } else {
                "never aborted"
            }
        },
    )
    .unwrap();
    assert_eq!(result_rx.recv().unwrap(), Ok("aborted"));
    let again = job.take_result().unwrap_err();
    assert_eq!(again.code, HResult::WU_E_INVALID_OPERATION);
}

#[test]
fn clean_up_inside_the_jobs_own_callback_is_an_invalid_operation() {
    let (tx, rx) = mpsc::channel();
    let done = Arc::new(AtomicUsize::new(0));
    let d = done.clone();
    let job: J = Job::spawn(
        "t",
        0,
        AsyncState::none(),
        Callbacks::none()
            .on_progress(move |job, _| tx.send(job.clean_up()).unwrap())
            .on_completed(move |_| {
                d.fetch_add(1, Ordering::SeqCst);
            }),
        |ctx| {
            ctx.report(1);
            "ok"
        },
    )
    .unwrap();
    assert_eq!(
        rx.recv().unwrap().unwrap_err().code,
        HResult::WU_E_INVALID_OPERATION
    );
    job.clean_up().unwrap();
    assert_eq!(
        done.load(Ordering::SeqCst),
        1,
        "clean_up returns after the callbacks finished"
    );
}

#[test]
fn a_panicking_callback_is_caught_and_the_job_goes_on() {
    let (tx, rx) = mpsc::channel();
    let job: J = Job::spawn(
        "t",
        0,
        AsyncState::none(),
        Callbacks::none()
            .on_progress(|_, p| {
                if *p == 1 {
                    panic!("callback bug");
                }
            })
            .on_completed(move |_| tx.send("completed").unwrap()),
        |ctx| {
            ctx.report(1);
            ctx.report(2);
            "ok"
        },
    )
    .unwrap();
    assert_eq!(rx.recv().unwrap(), "completed");
    assert_eq!(job.take_result(), Ok("ok"));
}

#[test]
fn take_result_blocks_until_complete_then_releases_the_state_and_refuses_a_second_call() {
    let marker = Arc::new(42u32);
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let job: J = Job::spawn(
        "t",
        0,
        AsyncState::new(marker.clone()),
        Callbacks::none(),
        move |_| {
            go_rx.recv().unwrap();
            "done"
        },
    )
    .unwrap();
    assert_eq!(
        job.async_state().downcast_ref::<Arc<u32>>().map(|a| **a),
        Some(42)
    );
    assert!(
        !job.wait_timeout(Duration::from_millis(20)),
        "not complete before go"
    );
    let ender = {
        let job = job.clone();
        std::thread::spawn(move || job.take_result())
    };
    go_tx.send(()).unwrap();
    assert_eq!(ender.join().unwrap(), Ok("done"));
    assert!(job.async_state().is_none());
    assert_eq!(
        Arc::strong_count(&marker),
        1,
        "the job released the caller's state"
    );
    assert_eq!(
        job.take_result().unwrap_err().code,
        HResult::WU_E_INVALID_OPERATION
    );
}

#[test]
fn a_snapshot_never_changes_after_it_is_taken() {
    let (step_tx, step_rx) = mpsc::channel::<()>();
    let (ack_tx, ack_rx) = mpsc::channel::<()>();
    let job: Job<Vec<u32>, ()> = Job::spawn(
        "t",
        vec![],
        AsyncState::none(),
        Callbacks::none(),
        move |ctx| {
            ctx.update(|v| v.push(1));
            ack_tx.send(()).unwrap();
            step_rx.recv().unwrap();
            ctx.update(|v| v.push(2));
        },
    )
    .unwrap();
    ack_rx.recv().unwrap();
    let snap = job.progress();
    step_tx.send(()).unwrap();
    job.clean_up().unwrap();
    assert_eq!(snap, vec![1]);
    assert_eq!(job.progress(), vec![1, 2]);
}

#[test]
fn dropping_every_handle_does_not_cancel_the_job() {
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel::<&'static str>();
    let job: J = Job::spawn(
        "t",
        0,
        AsyncState::none(),
        Callbacks::none().on_completed(move |j| {
            done_tx.send(j.take_result().unwrap()).unwrap();
        }),
        move |_| {
            go_rx.recv().unwrap();
            "finished anyway"
        },
    )
    .unwrap();
    drop(job);
    go_tx.send(()).unwrap();
    assert_eq!(done_rx.recv().unwrap(), "finished anyway");
}

#[test]
fn async_waiters_see_completion_and_abort() {
    let job: J = Job::spawn("t", 0, AsyncState::none(), Callbacks::none(), |ctx| {
        block_on(ctx.abort_requested());
        "stopped"
    })
    .unwrap();
    let t0 = std::time::Instant::now();
    job.request_abort();
    block_on(job.wait());
    assert!(job.is_completed());
    assert_eq!(job.take_result(), Ok("stopped"));
    // Generous bound for a shared machine; the benchmark measures the real latency.
    assert!(t0.elapsed() < Duration::from_secs(5));
    // After completion, request_abort is a no-op.
    job.request_abort();
}

#[test]
fn progress_callbacks_are_rate_limited_and_the_last_snapshot_still_arrives() {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let c = calls.clone();
    let started = std::time::Instant::now();
    let job: J = Job::spawn(
        "t",
        0,
        AsyncState::none(),
        Callbacks::none().on_progress(move |_, p| c.lock().unwrap().push(*p)),
        |ctx| {
            for i in 1..=200_000 {
                ctx.report(i);
            }
            "ok"
        },
    )
    .unwrap();
    job.clean_up().unwrap();
    let elapsed = started.elapsed();
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.last(), Some(&200_000));
    // At most one delivery per MIN_PROGRESS_INTERVAL, plus the first and the last.
    let bound = elapsed.as_millis() / upkeep_job::MIN_PROGRESS_INTERVAL.as_millis() + 2;
    assert!(
        calls.len() as u128 <= bound,
        "{} callbacks in {elapsed:?}",
        calls.len()
    );
}

#[test]
fn a_panicking_job_completes_instead_of_hanging() {
    // Without `on_panic`: the completion callback runs and the result is E_UNEXPECTED.
    let (done_tx, done_rx) = mpsc::channel();
    let job: J = Job::spawn(
        "t",
        0,
        AsyncState::none(),
        Callbacks::none().on_completed(move |j| done_tx.send(j.is_completed()).unwrap()),
        |ctx| {
            ctx.report(7);
            panic!("a bug in the work");
        },
    )
    .unwrap();
    assert!(done_rx.recv().unwrap());
    let e = job.take_result().unwrap_err();
    assert_eq!(e.code, HResult::E_UNEXPECTED);
    assert!(e.message.contains("a bug in the work"), "{}", e.message);
    // With `on_panic`: the result is made from the last progress and the message.
    let job: Job<u32, String> = Job::spawn(
        "t",
        0,
        AsyncState::none(),
        Callbacks::none().on_panic(|last: &u32, msg| format!("stopped at {last}: {msg}")),
        |ctx| {
            ctx.report(41);
            panic!("{}", String::from("boom"));
        },
    )
    .unwrap();
    assert_eq!(job.take_result().unwrap(), "stopped at 41: boom");
}

/// The seeds' order, under a race: a job that reports its last progress just before it
/// returns still delivers that snapshot before it is complete — every progress callback
/// sees `is_completed() == false`, the last one sees the final value, and only then do
/// `is_completed`, `take_result` and the completion callback see the end. Many jobs, so
/// that the race the old engine lost (the worker marked the job complete while the
/// dispatcher still held the last snapshot) is run many times.
#[test]
fn every_progress_callback_runs_before_the_job_is_complete() {
    for round in 0..200u32 {
        let seen = Arc::new(Mutex::new(Vec::<(u32, bool)>::new()));
        let s2 = seen.clone();
        let (done_tx, done_rx) = mpsc::channel();
        let job: Job<u32, u32> = Job::spawn(
            "order",
            0,
            AsyncState::none(),
            Callbacks::none()
                .on_progress(move |j, p| s2.lock().unwrap().push((*p, j.is_completed())))
                .on_completed(move |j| done_tx.send(j.is_completed()).unwrap()),
            move |ctx| {
                for i in 1..=20 {
                    ctx.report(i);
                }
                round
            },
        )
        .unwrap();
        assert_eq!(job.take_result().unwrap(), round);
        assert!(job.is_completed());
        // When take_result returned, every progress callback had already run.
        let seen_at_result = seen.lock().unwrap().clone();
        assert!(done_rx.recv_timeout(Duration::from_secs(30)).unwrap());
        assert_eq!(
            seen_at_result.last().map(|s| s.0),
            Some(20),
            "round {round}"
        );
        assert!(
            seen_at_result.iter().all(|(_, completed)| !completed),
            "round {round}: {seen_at_result:?}"
        );
        job.clean_up().unwrap();
        assert_eq!(*seen.lock().unwrap(), seen_at_result);
    }
}

#[test]
fn a_progress_stream_sees_the_latest_snapshot_rises_to_the_last_and_ends_at_completion() {
    // The work reports 1..=50 and then waits to be let go, so the stream is subscribed
    // while the job runs; a second subscriber comes after completion.
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (at_tx, at_rx) = mpsc::channel::<()>();
    let job: J = Job::spawn("t", 0, AsyncState::none(), Callbacks::none(), move |ctx| {
        ctx.report(7);
        at_tx.send(()).unwrap();
        go_rx.recv().unwrap();
        for i in 8..=50 {
            ctx.report(i);
        }
        "done"
    })
    .unwrap();
    at_rx.recv().unwrap();
    let mut rx = job.subscribe();
    assert_eq!(*rx.borrow(), 7, "the snapshot at subscription");
    go_tx.send(()).unwrap();
    let mut seen = Vec::new();
    block_on(async {
        while rx.changed().await.is_ok() {
            seen.push(*rx.borrow_and_update());
        }
    });
    assert!(!seen.is_empty());
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    assert_eq!(seen.last(), Some(&50), "the last snapshot always arrives");
    assert!(job.is_completed(), "the stream ends at completion");
    let late = job.subscribe();
    assert_eq!(*late.borrow(), 50);
    assert!(
        late.has_changed().is_err(),
        "a complete job's stream is ended"
    );
    assert_eq!(job.take_result().unwrap(), "done");
}

#[test]
fn result_awaits_completion_and_is_taken_once_as_end_does() {
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let job: J = Job::spawn("t", 0, AsyncState::new(3u8), Callbacks::none(), move |_| {
        go_rx.recv().unwrap();
        "r"
    })
    .unwrap();
    let mut fut = std::pin::pin!(job.result());
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    assert!(
        fut.as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending(),
        "not complete yet"
    );
    go_tx.send(()).unwrap();
    assert_eq!(block_on(fut).unwrap(), "r");
    assert!(job.async_state().is_none(), "released with the result");
    assert_eq!(
        block_on(job.result()).unwrap_err().code,
        HResult::WU_E_INVALID_OPERATION
    );
    assert_eq!(
        job.take_result().unwrap_err().code,
        HResult::WU_E_INVALID_OPERATION
    );
}
