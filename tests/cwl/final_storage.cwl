cwlVersion: v1.2
class: Workflow
$namespaces: {arv: "http://arvados.org/cwl#"}
hints:
  arv:OutputStorageClass: {finalStorageClass: archive}
inputs: []
outputs:
  out: {type: File, outputSource: say/out}
steps:
  say:
    in: []
    out: [out]
    run: {class: CommandLineTool, inputs: [], baseCommand: [echo, final], stdout: final.txt, outputs: {out: stdout}}
