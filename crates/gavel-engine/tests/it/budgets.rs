//! Budgets and resources: reserve before, settle after, refuse from the first overflow.

use serde_json::json;

use gavel_contract::time::Span;
use gavel_engine::*;

use crate::*;

#[test]
fn request_rate_per_principal_cools_down_until_the_window_resets() {
    let w = World::example();
    w.approve("kb-search-v1");
    for i in 0..120 {
        assert_eq!(
            w.decide(kb_request()).verdict,
            Verdict::Allow,
            "request {i}"
        );
    }
    let d = w.decide(kb_request());
    assert_verdict(&d, Verdict::Cooldown, "budget.rate");
    assert_eq!(d.reasons[0].evidence["limit"], json!(120));
    assert_eq!(
        d.retry_after_seconds,
        Some(60),
        "NOW is on a minute boundary"
    );
    // Another principal has its own window; the next minute starts afresh.
    assert_eq!(
        w.decide_at(kb_request(), "svc-2", NOW).verdict,
        Verdict::Allow
    );
    assert_eq!(
        w.decide_at(kb_request(), "svc", NOW.saturating_add(Span::from_secs(60)))
            .verdict,
        Verdict::Allow
    );
}

#[test]
fn token_budget_counts_prompt_plus_max_tokens_and_settlement_frees_room() {
    let w = World::edited(&[("window: 1m, tokens: 200000", "window: 1m, tokens: 1000")]);
    w.approve("kb-search-v1");
    let first = w.decide(kb_request());
    let estimate = first.estimate.clone().unwrap();
    assert!(
        estimate.prompt_tokens > 20 && estimate.prompt_tokens < 100,
        "{estimate:?}"
    );
    assert_eq!(estimate.max_tokens, 400);
    assert_eq!(w.decide(kb_request()).verdict, Verdict::Allow);
    let refused = w.decide(kb_request());
    assert_verdict(&refused, Verdict::Cooldown, "budget.tokens");
    // Settle the first with what it really used: 30 + 20 tokens.
    let usage = Usage {
        prompt_tokens: 30,
        completion_tokens: 20,
        tool_calls: 0,
    };
    assert_eq!(
        w.engine
            .settle(&w.state, &first.decision_id, "kb-search-v1", &usage, NOW)
            .unwrap(),
        Settled::Settled
    );
    assert_eq!(
        w.engine
            .settle(&w.state, &first.decision_id, "kb-search-v1", &usage, NOW)
            .unwrap(),
        Settled::Unknown,
        "settles once"
    );
    assert_eq!(w.decide(kb_request()).verdict, Verdict::Allow);
}

#[test]
fn spend_budget_uses_the_price_table() {
    let w = World::edited(&[("window: 1d, usd: 300", "window: 1d, usd: 0.001")]);
    w.approve("kb-search-v1");
    let d = w.decide(kb_request());
    // gpt-4o-mini: 0.15 USD/1M in, 0.6 USD/1M out.
    let e = d.estimate.unwrap();
    assert_eq!(
        e.usd_micros,
        ((e.prompt_tokens as f64) * 0.15 + 400.0 * 0.6).ceil() as u64
    );
    let mut allowed = 1;
    loop {
        let d = w.decide(kb_request());
        if d.verdict != Verdict::Allow {
            assert_verdict(&d, Verdict::Cooldown, "budget.spend");
            break;
        }
        allowed += 1;
    }
    assert_eq!(allowed, 1000 / e.usd_micros);
}

#[test]
fn run_budget_on_tool_calls_blocks_the_run_only() {
    let w = World::edited(&[(
        "tokens: 50000, tool_calls: 40",
        "tokens: 50000, tool_calls: 2",
    )]);
    w.approve("order-agent-v2");
    let call = |run: &str| json!({"deployment": "order-agent-v2", "step": "lookup", "run_id": run, "action": {"type": "tool_call", "name": "lookup_order", "args": {"order_id": "A00012345"}}});
    let first = w.decide(call("r1"));
    assert_eq!(first.verdict, Verdict::Allow);
    // A tool call reads no prompt: its arguments are not tokens of a model's (docs/decide.md,
    // "The estimate"), though a token budget applies to the run.
    let estimate = first.estimate.as_ref().unwrap();
    assert_eq!(
        (
            estimate.prompt_tokens,
            estimate.max_tokens,
            estimate.tool_calls
        ),
        (0, 0, 1)
    );
    let second = w.decide(call("r1"));
    assert_eq!(second.verdict, Verdict::Allow);
    // Their outcomes, reported without a tool-call count (the CLI's default), keep the calls
    // charged: settling handed them back before.
    for done in [&first, &second] {
        w.engine
            .settle(
                &w.state,
                &done.decision_id,
                "order-agent-v2",
                &Usage::default(),
                NOW,
            )
            .unwrap();
    }
    // A run's budget never resets, so this is a BLOCK, not a COOLDOWN.
    assert_verdict(&w.decide(call("r1")), Verdict::Block, "budget.tool_calls");
    // A withdrawn call never ran: its tool call is given back.
    let r2 = w.decide(call("r2"));
    assert_eq!(r2.verdict, Verdict::Allow);
    let request = serde_json::from_value(call("r2")).unwrap();
    w.engine.withdraw(&w.state, &request, &r2, NOW).unwrap();
    assert_eq!(w.decide(call("r2")).verdict, Verdict::Allow);
    assert_eq!(w.decide(call("r2")).verdict, Verdict::Allow);
    assert_verdict(&w.decide(call("r2")), Verdict::Block, "budget.tool_calls");
    // The run is svc's: another principal's run of the same id has a budget of its own, and
    // the refusal names whose run it is.
    assert_eq!(
        w.decide_at(call("r2"), "svc-2", NOW).verdict,
        Verdict::Allow
    );
    let refused = w.decide(call("r2"));
    assert_eq!(
        refused.reasons[0].evidence["budget"],
        json!(r#"run/run/*/*|["svc","r2"]"#),
        "{refused:?}"
    );
}

#[test]
fn resources_are_held_while_in_flight() {
    let w = World::example();
    w.approve("kb-search-v1");
    let mut r = kb_request();
    r["resources"] = json!({"memory_mb": 10000});
    let first = w.decide(r.clone());
    assert_eq!(first.verdict, Verdict::Allow);
    assert_eq!(w.state.resources_in_use("memory_mb", NOW).unwrap(), 10000);
    let second = w.decide(r.clone());
    assert_verdict(&second, Verdict::Cooldown, "budget.resource");
    w.engine
        .settle(
            &w.state,
            &first.decision_id,
            "kb-search-v1",
            &Usage::default(),
            NOW,
        )
        .unwrap();
    assert_eq!(w.decide(r.clone()).verdict, Verdict::Allow);
    // An unsettled reservation stops holding resources after its time to live.
    let later = NOW.saturating_add(Span::from_secs(601));
    assert_eq!(w.decide_at(r, "svc", later).verdict, Verdict::Allow);
}

#[test]
fn undeclared_resources_are_refused() {
    let w = World::example();
    w.approve("kb-search-v1");
    let mut r = kb_request();
    r["resources"] = json!({"gpu": 1});
    assert_verdict(&w.decide(r), Verdict::Block, "budget.resource");
}

/// A request that asks more than a whole window's limit, or a resource's whole capacity, can
/// never fit however long it waits: BLOCK, not a COOLDOWN whose retry is refused again.
#[test]
fn a_request_larger_than_the_limit_itself_is_blocked_not_cooled_down() {
    let w = World::edited(&[("window: 1m, tokens: 200000", "window: 1m, tokens: 300")]);
    w.approve("kb-search-v1");
    // The approved max_tokens (400) alone is more than the window holds.
    let d = w.decide(kb_request());
    assert_verdict(&d, Verdict::Block, "budget.tokens");
    assert!(d.retry_after.is_none(), "{d:?}");
    let w = World::example();
    w.approve("kb-search-v1");
    let mut r = kb_request();
    r["resources"] = json!({"memory_mb": 16385});
    assert_verdict(&w.decide(r), Verdict::Block, "budget.resource");
    let mut r = kb_request();
    r["resources"] = json!({"memory_mb": 16384});
    assert_eq!(w.decide(r.clone()).verdict, Verdict::Allow);
    assert_verdict(&w.decide(r), Verdict::Cooldown, "budget.resource");
}

#[test]
fn a_refused_request_holds_no_budget() {
    let w = World::example();
    w.approve("kb-search-v1");
    let mut r = kb_request();
    r["model"] = json!("gpt-5");
    assert_eq!(w.decide(r).verdict, Verdict::Block);
    assert_eq!(w.state.open_reservations(NOW).unwrap(), 0);
    assert!(w.state.all_windows().unwrap().is_empty());
}

#[test]
fn reported_usage_is_a_count_the_ledger_records_exactly() {
    let most = (1u64 << 53) - 1;
    let usage = |n: u64| {
        serde_json::from_value::<Usage>(
            serde_json::json!({"prompt_tokens": n, "completion_tokens": 1}),
        )
    };
    assert_eq!(usage(most).unwrap().prompt_tokens, most);
    let refused = usage(most + 1).unwrap_err().to_string();
    assert!(refused.contains("2^53 - 1"), "{refused}");
}

/// An image is reserved at the most its snapshot counts for one (the upstream reads its size,
/// gavel does not), and its URL or base64 data is not counted as text: a 300 KB data URL is
/// one image, not a hundred thousand tokens of text, and a link is not twenty tokens. One sent
/// with `detail: low` is reserved at what the snapshot counts for such an image, whatever its
/// size.
#[test]
fn images_are_reserved_at_what_their_snapshot_counts_for_one() {
    let w = World::example();
    w.approve("kb-search-v1");
    let text_only = w.decide(kb_request()).estimate.unwrap().prompt_tokens;
    // Each in a world of its own: together they would fill the use case's token budget.
    let with_images = |images: &[(&str, &str)]| {
        let w = World::example();
        w.approve("kb-search-v1");
        let mut request = kb_request();
        let mut parts = vec![json!({"type": "text", "text": "How do I book a meeting room?"})];
        parts.extend(images.iter().map(|(url, detail)| {
            json!({"type": "image_url", "image_url": {"url": url, "detail": detail}})
        }));
        request["messages"][1]["content"] = json!(parts);
        let d = w.decide(request);
        assert_eq!(d.verdict, Verdict::Allow, "{d:?}");
        d.estimate.unwrap().prompt_tokens
    };
    // gpt-4o-mini-2024-07-18: 2,833 + 8 x 5,667 tokens for its largest image; 2,833 at low
    // detail.
    let (per_image, per_low_detail_image) = (48_169, 2_833);
    let data_url = format!("data:image/png;base64,{}", "iVBORw0KGgo".repeat(30_000));
    let link = "https://example.org/floor-plan.png";
    assert_eq!(with_images(&[(&data_url, "high")]), text_only + per_image);
    assert_eq!(with_images(&[(link, "auto")]), text_only + per_image);
    assert_eq!(
        with_images(&[(&data_url, "high"), (link, "high")]),
        text_only + 2 * per_image
    );
    assert_eq!(
        with_images(&[(&data_url, "low"), (link, "high")]),
        text_only + per_low_detail_image + per_image
    );
}

/// The texts' token count worked out ahead of the decision (`Engine::prescan`, as the gateway
/// does off its decider thread) gives the estimate the engine counts itself: for plain text,
/// with an image and the `user` parameter (which are not counted as text), and for a request
/// that sovereignty routes to a target whose model counts in another encoding (counted ahead
/// for the target). A count made for another request is not taken.
#[test]
fn a_prescanned_token_count_gives_the_estimate_the_engine_counts() {
    let parse = |v: serde_json::Value| parse_request(v.to_string().as_bytes()).unwrap();
    let estimate = |w: &World, request: &DecideRequest, prescanned: Option<Prescanned>| {
        let input = DecideInput {
            request,
            principal: "svc",
            decision_id: "dec_counted".into(),
            now: NOW,
        };
        let d = w.engine.decide_prescanned(&w.state, input, prescanned);
        assert_eq!(d.verdict, Verdict::Allow, "{d:?}");
        let routed = codes(&d).contains(&"sovereignty.routed");
        (d.estimate.unwrap().prompt_tokens, routed)
    };
    // Each decision in a world of its own, so that no budget fills up across them.
    let kb = || {
        let w = World::example();
        w.approve("kb-search-v1");
        w
    };
    let long =
        "Where is the onboarding checklist for new starters kept, and who owns it? ".repeat(400);
    let mut with_image = kb_request();
    with_image["messages"][1]["content"] = json!([
        {"type": "text", "text": "What does this floor plan show?"},
        {"type": "image_url", "image_url": {"url": "https://example.org/plan.png"}}
    ]);
    let mut with_user = kb_request();
    with_user["params"] = json!({"user": "employee-42"});
    let mut long_request = kb_request();
    long_request["messages"][1]["content"] = json!(long);
    let mut estimates = Vec::new();
    for request in [kb_request(), with_image, with_user, long_request] {
        let request = parse(request);
        let counted = estimate(&kb(), &request, None);
        let w = kb();
        let prescanned = w.engine.prescan(&request);
        assert_eq!(estimate(&w, &request, Some(prescanned)), counted);
        estimates.push(counted.0);
    }
    // The `user` parameter is not read as text.
    assert_eq!(estimates[2], estimates[0]);

    // Support triage routed to its self-hosted fallback (llama: cl100k) for the PII its use
    // case declares; counted ahead for the route target, not for the deployment asked for
    // (gpt-4o: o200k).
    let triage = || {
        let w = World::edited(&[(
            "    data_classes: [internal]\n  credit-limit:",
            "    data_classes: [internal, pii]\n  credit-limit:",
        )]);
        w.approve("support-triage-v3");
        w.approve("support-triage-local");
        w
    };
    let mut routed = triage_request("support-triage-v3");
    routed["messages"][1]["content"] = json!(long);
    let routed = parse(routed);
    let (counted, was_routed) = estimate(&triage(), &routed, None);
    assert!(was_routed);
    let w = triage();
    let prescanned = w.engine.prescan(&routed);
    assert_eq!(estimate(&w, &routed, Some(prescanned)), (counted, true));
    // Where it is not routed (its use case declares no PII), the same request is counted for
    // gpt-4o, and to another figure: a count for the deployment asked for, carried over to
    // the route target, would show.
    let unrouted = {
        let w = World::example();
        w.approve("support-triage-v3");
        estimate(&w, &routed, None)
    };
    assert!(!unrouted.1);
    assert_ne!(unrouted.0, counted);

    // A count made for a longer request is not the shorter one's.
    let short = parse(kb_request());
    let counted = estimate(&kb(), &short, None);
    let w = kb();
    let other = w.engine.prescan(&parse({
        let mut r = kb_request();
        r["messages"][1]["content"] = json!(long);
        r
    }));
    assert_eq!(estimate(&w, &short, Some(other)), counted);
}

/// Embeddings read their inputs as a model's prompt: counted (each input as it is, no chat
/// framing), no completion reserved, and refused like any call once a window is full. As a
/// `task` (how the gateway sent them before) they reserved nothing and no budget held them.
#[test]
fn embeddings_are_counted_and_held_to_token_budgets() {
    let w = World::edited(&[("window: 1m, tokens: 200000", "window: 1m, tokens: 40")]);
    w.approve("kb-search-v1");
    let inputs = [
        "How do I book a meeting room?",
        "Where is the printer on floor three?",
    ];
    let embed = |kind: &str| {
        json!({"deployment": "kb-search-v1", "action": {"type": kind},
               "content": inputs.iter().map(|t| json!({"role": "user", "text": t})).collect::<Vec<_>>()})
    };
    let first = w.decide(embed("embeddings"));
    assert_eq!(first.verdict, Verdict::Allow);
    let counted: u64 = inputs.iter().map(|t| Encoding::O200k.count(t)).sum();
    let estimate = first.estimate.as_ref().unwrap();
    assert_eq!((estimate.prompt_tokens, estimate.max_tokens), (counted, 0));
    // Two calls of about 16 tokens fill 40; the third is refused until the window ends.
    assert_eq!(w.decide(embed("embeddings")).verdict, Verdict::Allow);
    assert_verdict(
        &w.decide(embed("embeddings")),
        Verdict::Cooldown,
        "budget.tokens",
    );
    // A task's content is not a model's prompt: it reserves no tokens.
    assert_eq!(w.decide(embed("task")).verdict, Verdict::Allow);
}
