;; A hand-written rule module in WAT with the same input convention and segments as the Go
;; example wasm/examples/pathpromo (it loops, which CEL cannot), small enough to compile in
;; milliseconds even in a -race build of the host:
;;
;;   slot 0  string  request.path
;;   slot 1  string  the promo code (absent if none)
;;   bit 0   deep_browser  the path has at least 3 non-empty segments (up to ? or #)
;;   bit 1   valid_promo   6-16 digits (spaces ignored) passing the Luhn checksum; another
;;                         character sets valid_promo's error bit
;;
;; Assemble: wat2wasm promo.wat -o promo.wasm
(module
  (memory (export "memory") 1)
  (func (export "segedge_abi_version") (result i32) (i32.const 1))
  (func (export "segedge_input_ptr") (result i32) (i32.const 1024))
  (func (export "segedge_input_cap") (result i32) (i32.const 32768))
  (func (export "segedge_output_ptr") (result i32) (i32.const 40960))

  ;; $depth counts the non-empty segments of the path at [p, p+n), up to ? or #.
  (func $depth (param $p i32) (param $n i32) (result i32)
    (local $i i32) (local $c i32) (local $d i32) (local $in i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $c (i32.load8_u (i32.add (local.get $p) (local.get $i))))
        (br_if $done (i32.eq (local.get $c) (i32.const 63)))
        (br_if $done (i32.eq (local.get $c) (i32.const 35)))
        (if (i32.eq (local.get $c) (i32.const 47))
          (then (local.set $in (i32.const 0)))
          (else
            (if (i32.eqz (local.get $in))
              (then
                (local.set $d (i32.add (local.get $d) (i32.const 1)))
                (local.set $in (i32.const 1))))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (local.get $d))

  ;; $luhn: 1 valid, 0 not, -1 a character other than digits and spaces.
  (func $luhn (param $p i32) (param $n i32) (result i32)
    (local $i i32) (local $c i32) (local $sum i32) (local $k i32) (local $d i32)
    (local.set $i (local.get $n))
    (block $done
      (loop $next
        (br_if $done (i32.eqz (local.get $i)))
        (local.set $i (i32.sub (local.get $i) (i32.const 1)))
        (local.set $c (i32.load8_u (i32.add (local.get $p) (local.get $i))))
        (if (i32.ne (local.get $c) (i32.const 32))
          (then
            (if (i32.or (i32.lt_u (local.get $c) (i32.const 48)) (i32.gt_u (local.get $c) (i32.const 57)))
              (then (return (i32.const -1))))
            (local.set $d (i32.sub (local.get $c) (i32.const 48)))
            (if (i32.and (local.get $k) (i32.const 1))
              (then
                (local.set $d (i32.mul (local.get $d) (i32.const 2)))
                (if (i32.gt_u (local.get $d) (i32.const 9))
                  (then (local.set $d (i32.sub (local.get $d) (i32.const 9)))))))
            (local.set $sum (i32.add (local.get $sum) (local.get $d)))
            (local.set $k (i32.add (local.get $k) (i32.const 1)))))
        (br $next)))
    (i32.and
      (i32.and (i32.ge_u (local.get $k) (i32.const 6)) (i32.le_u (local.get $k) (i32.const 16)))
      (i32.eqz (i32.rem_u (local.get $sum) (i32.const 10)))))

  ;; $strlen is the length of the string in the slot at s; $str its address, or -1 if the slot
  ;; is not a string, or -2 if the string lies outside the input.
  (func $strlen (param $s i32) (result i32) (i32.load (i32.add (local.get $s) (i32.const 4))))
  (func $str (param $s i32) (param $len i32) (result i32)
    (if (i32.ne (i32.load8_u (local.get $s)) (i32.const 4)) (then (return (i32.const -1))))
    (if (i64.gt_u
          (i64.add (i64.load (i32.add (local.get $s) (i32.const 8))) (i64.extend_i32_u (call $strlen (local.get $s))))
          (i64.extend_i32_u (local.get $len)))
      (then (return (i32.const -2))))
    (i32.add (i32.const 1024) (i32.load (i32.add (local.get $s) (i32.const 8)))))

  (func (export "segedge_eval") (param $len i32) (result i32)
    (local $member i64) (local $err i64) (local $a i32) (local $r i32)
    (if (i32.lt_u (local.get $len) (i32.const 48)) (then (return (i32.const 1))))
    (if (i32.ne (i32.load (i32.const 1024)) (i32.const 1)) (then (return (i32.const 1))))
    (if (i32.ne (i32.load (i32.const 1028)) (i32.const 2)) (then (return (i32.const 1))))
    ;; slot 0 (at 1040): the path
    (local.set $a (call $str (i32.const 1040) (local.get $len)))
    (if (i32.eq (local.get $a) (i32.const -2)) (then (return (i32.const 1))))
    (if (i32.ge_s (local.get $a) (i32.const 0))
      (then
        (if (i32.ge_u (call $depth (local.get $a) (call $strlen (i32.const 1040))) (i32.const 3))
          (then (local.set $member (i64.or (local.get $member) (i64.const 1)))))))
    ;; slot 1 (at 1056): the promo code
    (local.set $a (call $str (i32.const 1056) (local.get $len)))
    (if (i32.eq (local.get $a) (i32.const -2)) (then (return (i32.const 1))))
    (if (i32.ge_s (local.get $a) (i32.const 0))
      (then
        (local.set $r (call $luhn (local.get $a) (call $strlen (i32.const 1056))))
        (if (i32.eq (local.get $r) (i32.const 1))
          (then (local.set $member (i64.or (local.get $member) (i64.const 2)))))
        (if (i32.eq (local.get $r) (i32.const -1))
          (then (local.set $err (i64.or (local.get $err) (i64.const 2)))))))
    (i64.store (i32.const 40960) (local.get $member))
    (i64.store (i32.const 40968) (local.get $err))
    (i32.const 0)))
