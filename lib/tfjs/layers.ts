// A tfjs-layers head that holds the classifier (and bias) as its weights and outputs the
// fused linear + cross-entropy loss per label, so model.fit trains a language-model head
// without an N×V tensor ever existing.
//
// Pattern: compile's loss sees only (yTrue, yPred), never the weights, so the head lives in
// the model: it takes [hidden, labels] as inputs (labels are a model input), outputs the loss
// of each label, and the model is compiled with passThroughLoss (the loss is yPred).
//
//   const hidden = tf.input({ shape: [D] }); const labels = tf.input({ shape: [1], dtype: 'int32' });
//   const head = new FusedLinearCrossEntropy({ units: V });
//   const loss = head.apply([someLayers(hidden), labels]);
//   model.compile({ optimizer, loss: passThroughLoss }); model.fit([x, y], y);

import * as tf from '@tensorflow/tfjs-core';
import * as tfl from '@tensorflow/tfjs-layers';
import { CutlossError } from '../index.js';
import { takesIntegerLabels } from './losses.js';
import { linearCrossEntropy, type TfLinearCrossEntropyOptions } from './ops.js';

export { passThroughLoss, sparseCategoricalCrossentropy } from './losses.js';

/**
 * model.compile(args), then lets fit and evaluate take integer targets ([batch, 1] or
 * [batch]) for the outputs whose loss is cutloss's sparseCategoricalCrossentropy. tfjs-layers
 * checks each target against the output's shape ([batch, V]) and makes that exception only
 * for its own sparse loss, by identity; this applies the same exception to ours.
 */
export function compileWithIntegerLabels(model: tfl.LayersModel, args: tfl.ModelCompileArgs): void {
  model.compile(args);
  type Compiled = { feedLossFns?: unknown[]; feedOutputShapes?: (Shape | null)[]; model?: Compiled };
  let m = model as unknown as Compiled;
  if (!Array.isArray(m.feedLossFns) && m.model !== undefined) m = m.model; // a Sequential compiles its inner model
  if (!Array.isArray(m.feedLossFns) || !Array.isArray(m.feedOutputShapes)) {
    throw new CutlossError('E_BACKEND', 'compileWithIntegerLabels: this tfjs-layers version keeps its compiled losses elsewhere');
  }
  m.feedLossFns.forEach((fn, i) => {
    const shape = m.feedOutputShapes![i];
    if (takesIntegerLabels(fn) && shape) m.feedOutputShapes![i] = [...shape.slice(0, -1), 1];
  });
}

type Shape = (number | null)[];
type LayerArgs = ConstructorParameters<typeof tfl.layers.Layer>[0];
type LayerVariable = tfl.LayerVariable;
type Initializer = ReturnType<typeof tfl.initializers.glorotUniform>;

export interface FusedLinearCrossEntropyArgs extends NonNullable<LayerArgs> {
  /** V: the number of classes (rows of the classifier). */
  units: number;
  /** Learn a bias [V] (default true). */
  useBias?: boolean;
  /** Default glorotUniform (with `seed` when given). */
  classifierInitializer?: Initializer;
  /** Default zeros. */
  biasInitializer?: Initializer;
  /** Seed of the default classifier initializer. */
  seed?: number;
  /**
   * Options of the fused loss (core linearCrossEntropy's, plain values): labelSmoothing, zLoss,
   * softcap, normalizer, ignoreIndex, classWeights, … The reduction is always 'none'.
   */
  lossOptions?: Omit<TfLinearCrossEntropyOptions, 'bias' | 'reduction'>;
}

/**
 * inputs [hidden [batch, ..., D], labels int32 [batch, ...] (one per hidden row; [batch, 1]
 * for one label per example)] → the loss of each label, in the labels' shape.
 */
export class FusedLinearCrossEntropy extends tfl.layers.Layer {
  static className = 'FusedLinearCrossEntropy';
  readonly units: number;
  readonly useBias: boolean;
  readonly lossOptions: Omit<TfLinearCrossEntropyOptions, 'bias' | 'reduction'>;
  private readonly classifierInitializer: Initializer;
  private readonly biasInitializer: Initializer;
  private readonly seed: number | undefined;
  classifier: LayerVariable | null = null;
  bias: LayerVariable | null = null;

  constructor(args: FusedLinearCrossEntropyArgs) {
    super(args);
    if (!Number.isInteger(args.units) || args.units < 1) {
      throw new CutlossError('E_OPTION', `FusedLinearCrossEntropy: units must be a positive integer, got ${args.units}`);
    }
    this.units = args.units;
    this.useBias = args.useBias ?? true;
    this.seed = args.seed;
    this.lossOptions = args.lossOptions ?? {};
    this.classifierInitializer = args.classifierInitializer
      ?? tfl.initializers.glorotUniform(args.seed === undefined ? {} : { seed: args.seed });
    this.biasInitializer = args.biasInitializer ?? tfl.initializers.zeros();
  }

  override build(inputShape: Shape | Shape[]): void {
    const hidden = this.shapes(inputShape)[0];
    const D = hidden[hidden.length - 1];
    if (typeof D !== 'number') throw new CutlossError('E_SHAPE', 'FusedLinearCrossEntropy: the last axis of hidden must be known');
    this.classifier = this.addWeight('classifier', [this.units, D], 'float32', this.classifierInitializer);
    if (this.useBias) this.bias = this.addWeight('bias', [this.units], 'float32', this.biasInitializer);
    this.built = true;
  }

  override computeOutputShape(inputShape: Shape | Shape[]): Shape {
    return this.shapes(inputShape)[1];
  }

  override call(inputs: tf.Tensor | tf.Tensor[]): tf.Tensor {
    return tf.tidy(() => {
      if (!Array.isArray(inputs) || inputs.length !== 2) {
        throw new CutlossError('E_SHAPE', 'FusedLinearCrossEntropy: inputs must be [hidden, labels]');
      }
      const [hidden, labels] = inputs as [tf.Tensor, tf.Tensor];
      const loss = linearCrossEntropy(hidden, this.classifier!.read() as tf.Tensor2D, labels, {
        ...this.lossOptions,
        reduction: 'none',
        ...(this.bias === null ? {} : { bias: this.bias.read() as tf.Tensor1D }),
      });
      return tf.reshape(loss, labels.shape);
    });
  }

  /** The logits hidden·Wᵀ + b [..., V] for inference (sampling, accuracy): this one does form them. */
  logits(hidden: tf.Tensor): tf.Tensor {
    return tf.tidy(() => {
      const D = hidden.shape[hidden.rank - 1]!;
      const flat = tf.reshape(hidden, [-1, D]);
      let z: tf.Tensor = tf.matMul(flat, this.classifier!.read(), false, true);
      if (this.bias !== null) z = tf.add(z, this.bias.read());
      return tf.reshape(z, [...hidden.shape.slice(0, -1), this.units]);
    });
  }

  override getConfig(): tf.serialization.ConfigDict {
    const { classWeights, ...plain } = this.lossOptions;
    return {
      ...super.getConfig(),
      units: this.units,
      useBias: this.useBias,
      ...(this.seed === undefined ? {} : { seed: this.seed }),
      // plain JSON values; the interface types lack ConfigDict's index signature
      lossOptions: { ...plain, ...(classWeights === undefined ? {} : { classWeights: Array.from(classWeights) }) } as unknown as tf.serialization.ConfigDict,
    } as tf.serialization.ConfigDict;
  }

  static override fromConfig<T extends tf.serialization.Serializable>(
    cls: tf.serialization.SerializableConstructor<T>, config: tf.serialization.ConfigDict,
  ): T {
    const lossOptions = { ...(config.lossOptions as Record<string, unknown> | undefined) };
    if (Array.isArray(lossOptions.classWeights)) lossOptions.classWeights = Float32Array.from(lossOptions.classWeights as number[]);
    return new cls({ ...config, lossOptions });
  }

  private shapes(inputShape: Shape | Shape[]): [Shape, Shape] {
    const s = inputShape as Shape[];
    if (!Array.isArray(s) || s.length !== 2 || !Array.isArray(s[0]) || !Array.isArray(s[1])) {
      throw new CutlossError('E_SHAPE', 'FusedLinearCrossEntropy: inputs must be [hidden, labels]');
    }
    return [s[0], s[1]];
  }
}

tf.serialization.registerClass(FusedLinearCrossEntropy);
