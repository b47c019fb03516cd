#!/usr/bin/env cwl-runner
# The toil-arvados demo: three steps, the first two scattered over every input word.
cwlVersion: v1.2
class: Workflow
doc: Shout each word, measure each shout, merge the measurements under a header read from Keep.
requirements:
  ScatterFeatureRequirement: {}
inputs:
  words: string[]
  header: File
outputs:
  report:
    type: File
    outputSource: merge/report
steps:
  shout:
    run: shout.cwl
    scatter: word
    in: {word: words}
    out: [loud]
  measure:
    run: measure.cwl
    scatter: text
    in: {text: shout/loud}
    out: [line]
  merge:
    run: merge.cwl
    in: {header: header, lines: measure/line}
    out: [report]
