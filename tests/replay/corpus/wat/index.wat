;; The replay corpus in WebAssembly text: a log line, the clock, random bytes, a secret, a read, a write and a
;; push, kept as data; a request holding `!` traps after its calls, one holding `~` spins past its time limit.
(module
  (import "flux" "call" (func $call (param i32 i32) (result i64)))
  (import "flux" "log" (func $log (param i32 i32)))
  (memory (export "memory") 2)
  (global $next (mut i32) (i32.const 4096))

  (data (i32.const 16) "{\"op\":\"db.query\",\"args\":{\"insert\":\"events\",\"values\":{\"body\":\"written by wat\"},\"returning\":[\"id\",\"body\",\"amount\",\"at\",\"uid\"]}}")
  (data (i32.const 512) "{\"op\":\"queue.push\",\"args\":{\"function\":\"after\",\"payload\":{\"from\":\"wat\"}}}")
  (data (i32.const 768) "{\"op\":\"now\"}")
  (data (i32.const 800) "{\"op\":\"random\",\"args\":{\"bytes\":8}}")
  (data (i32.const 848) "hello from wat")
  (data (i32.const 880) "{\"op\":\"secrets.get\",\"args\":{\"name\":\"token\"}}")
  (data (i32.const 944) "{\"op\":\"db.query\",\"args\":{\"select\":\"events\",\"columns\":[\"id\",\"at\",\"uid\",\"amount\"]}}")

  (func (export "flux_alloc") (param $size i32) (result i32)
    (local $at i32)
    (local.set $at (global.get $next))
    (global.set $next (i32.add (global.get $next) (i32.and (i32.add (local.get $size) (i32.const 7)) (i32.const -8))))
    (block $done
      (loop $grow
        (br_if $done (i32.le_u (global.get $next) (i32.mul (memory.size) (i32.const 65536))))
        (if (i32.lt_s (memory.grow (i32.const 1)) (i32.const 0)) (then (unreachable)))
        (br $grow)))
    (local.get $at))

  ;; whether the `len` bytes at `ptr` hold the byte `char`
  (func $holds (param $ptr i32) (param $len i32) (param $char i32) (result i32)
    (local $i i32)
    (block $no
      (loop $scan
        (br_if $no (i32.ge_u (local.get $i) (local.get $len)))
        (if (i32.eq (i32.load8_u (i32.add (local.get $ptr) (local.get $i))) (local.get $char))
          (then (return (i32.const 1))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $scan)))
    (i32.const 0))

  (func (export "flux_handle") (param $ptr i32) (param $len i32) (result i64)
    (local $reply i64)
    (call $log (i32.const 848) (i32.const 14))
    (drop (call $call (i32.const 768) (i32.const 12)))
    (drop (call $call (i32.const 800) (i32.const 34)))
    (drop (call $call (i32.const 880) (i32.const 44)))
    (drop (call $call (i32.const 944) (i32.const 81)))
    (drop (call $call (i32.const 512) (i32.const 72)))
    (local.set $reply (call $call (i32.const 16) (i32.const 125)))
    (if (call $holds (local.get $ptr) (local.get $len) (i32.const 33)) (then (unreachable)))  ;; `!`
    (if (call $holds (local.get $ptr) (local.get $len) (i32.const 126))  ;; `~`
      (then (loop $spin (br $spin))))
    ;; the reply of the insert is {"ok":true,"value":{...}}: hand it back as the body
    (local.get $reply)))
