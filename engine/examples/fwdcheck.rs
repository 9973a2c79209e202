use ferrite_engine::backend::cpu::CpuBackend;
use ferrite_engine::model::{Batch, Model};
use ferrite_engine::ModelConfig;
use ferrite_loader::GgufFile;
use std::sync::Arc;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let key = &args[1];
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(format!("/work/shared/reference/{key}.json")).unwrap()).unwrap();
    let file = Arc::new(GgufFile::open(format!("/work/models/{}", r["model_file"].as_str().unwrap())).unwrap());
    let cfg = ModelConfig::from_gguf(&file).unwrap();
    let mut m = Model::load(CpuBackend::new(), &file, cfg, 2048).unwrap();
    for case in r["cases"].as_array().unwrap() {
        let p: Vec<u32> = case["prompt_tokens"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        let g: Vec<u32> = case["greedy_tokens"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        let mut seq = p.clone(); seq.extend_from_slice(&g[..g.len()-1]);
        m.tables.remove(0);
        let mut b = Batch::default();
        for (i, &t) in seq.iter().enumerate() { b.push(t, 0, i + 1 >= p.len()); }
        let t0 = std::time::Instant::now();
        let logits = m.forward(&b).unwrap();
        let el = t0.elapsed();
        let nv = m.cfg.n_vocab;
        let mut worst = 0f64; let mut mism = 0;
        for (step, row) in logits.chunks(nv).enumerate().take(case["top5_logprobs"].as_array().unwrap().len()) {
            let top5 = &case["top5_logprobs"][step];
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let lse = max as f64 + row.iter().map(|&l| ((l - max) as f64).exp()).sum::<f64>().ln();
            let am = ferrite_engine::sampler::argmax(row);
            let t1 = top5[0][0].as_u64().unwrap() as u32;
            if top5[0][1].as_f64().unwrap() - top5[1][1].as_f64().unwrap() > 0.1 && am != t1 { mism += 1; }
            if std::env::var_os("VERBOSE").is_some() && step < 8 { let v: Vec<String> = top5.as_array().unwrap().iter().map(|e| format!("{}:{:.3}/{:.3}", e[0], e[1].as_f64().unwrap(), row[e[0].as_u64().unwrap() as usize] as f64 - lse)).collect(); println!("  step {step}: {}", v.join(" ")); }
            for e in top5.as_array().unwrap() { let d = (row[e[0].as_u64().unwrap() as usize] as f64 - lse - e[1].as_f64().unwrap()).abs(); if d > worst { worst = d; } }
        }
        println!("{key} {}: {} rows in {:?}, worst {:.4}, top1 mismatches {}", case["name"], seq.len(), el, worst, mism);
    }
}
